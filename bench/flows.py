"""Flows: the companion RealNVP (energydsl/models/flows.py) against a paper-style reference
RealNVP written here (half-input MLPs, tanh-bounded log-scales) and, when it is installed,
zuko's RealNVP (zuko.flows.RealNVP; optional, not a dependency), with the same number of
couplings, the same hidden widths and alternating masks; the companion MAF against
zuko's MAF (zuko.flows.MAF) with the same number of transforms and hidden widths; and the
spline MAF (transform="spline", 8 bins) against zuko's NSF; in this one process.

    .venv/bin/python bench/flows.py [--D 64 784] [--couplings 6] [--hidden 128 128]
                                    [--batch 128] [--repeats 20] [--family realnvp maf nsf]

Prints each model's parameter count (Adam keeps two more numbers per parameter) and the
best-of-repeats time of one training step (negative log-density of the batch in flow space,
backward, Adam step; float32, one thread), the models timed in turn within each repeat so
that a busy machine slows them alike, and the ratios to the companion's.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from energydsl.models import MAF, RealNVP

try:
    import zuko
except ImportError:  # the zuko column is skipped
    zuko = None


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ReferenceRealNVP(nn.Module):
    """Dinh et al. 2016 with alternating masks: coupling i keeps the entries of one parity
    (strided views, no gathers), its MLP maps them to a log-scale and a shift for each
    entry of the other parity; log-scale = scale * tanh(raw); standard normal prior."""

    def __init__(self, dim: int, couplings: int, hidden: Sequence[int]) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError("the reference interleaves two halves: dim must be even")
        half = dim // 2
        self.dim = dim
        self.nets = nn.ModuleList(_mlp([half, *hidden, 2 * half]) for _ in range(couplings))
        self.scales = nn.ParameterList(nn.Parameter(torch.ones(half)) for _ in range(couplings))

    def log_density(self, x: Tensor) -> Tensor:
        pairs = x.reshape(x.shape[0], self.dim // 2, 2)
        even, odd = pairs[..., 0], pairs[..., 1]
        logdet = x.new_zeros(x.shape[0])
        for i, (net, scale) in enumerate(zip(self.nets, self.scales, strict=True)):
            keep, move = (even, odd) if i % 2 == 0 else (odd, even)
            raw, shift = net(keep).chunk(2, dim=-1)
            log_scale = scale * torch.tanh(raw)
            move = move * torch.exp(log_scale) + shift
            logdet = logdet + log_scale.sum(-1)
            even, odd = (keep, move) if i % 2 == 0 else (move, keep)
        z2 = even.pow(2).sum(-1) + odd.pow(2).sum(-1)
        return -0.5 * z2 - self.dim * 0.5 * math.log(2 * math.pi) + logdet


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _nll(model: nn.Module, x: Tensor) -> Tensor:
    return -model.log_density(x).mean()


def _zuko_nll(model: nn.Module, x: Tensor) -> Tensor:
    return -model().log_prob(x).mean()


Loss = Callable[[nn.Module, Tensor], Tensor]


def _step(model: nn.Module, nll: Loss, x: Tensor) -> Callable[[], None]:
    """One training step: loss, backward, Adam step."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def work() -> None:
        opt.zero_grad(set_to_none=True)
        nll(model, x).backward()
        opt.step()

    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--D", type=int, nargs="+", default=[64, 784])
    parser.add_argument("--couplings", type=int, default=6)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--family", nargs="+", default=["realnvp", "maf", "nsf"],
                        choices=["realnvp", "maf", "nsf"],
                        help="nsf: MAF with 8-bin spline layers against zuko.flows.NSF")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from energydsl.memory import keep_freed_memory

    keep_freed_memory()  # as `energydsl train` runs; both libraries alike
    hidden = tuple(args.hidden)
    for family in args.family:
        what = {"realnvp": "alternating masks", "maf": "orderings reversed between layers",
                "nsf": "8-bin rational-quadratic splines, orderings reversed"}[family]
        print(f"\n{family}, {args.couplings} transforms, hidden {hidden}, {what}, batch "
              f"{args.batch}, float32, 1 thread, best of {args.repeats}"
              + ("" if zuko is not None else "; zuko not installed: its column is skipped"))
        print(f"{'D':>5} {'model':10} {'parameters':>11} {'step':>9}   companion / this")
        for dim in args.D:
            _compare(family, dim, args, hidden)


def _models(family: str, dim: int, couplings: int, hidden: tuple
            ) -> dict[str, tuple[nn.Module, Loss]]:
    if family in ("maf", "nsf"):
        spline = {"transform": "spline", "bins": 8} if family == "nsf" else {}
        models: dict[str, tuple[nn.Module, Loss]] = {"companion": (
            MAF(dim=dim, n_layers=couplings, hidden=hidden, dequantization="none", **spline),
            _nll)}
        if zuko is not None:
            flow = (zuko.flows.NSF(dim, transforms=couplings, hidden_features=hidden, bins=8)
                    if family == "nsf" else
                    zuko.flows.MAF(dim, transforms=couplings, hidden_features=hidden))
            models["zuko"] = (flow, _zuko_nll)
        return models
    models = {"companion": (RealNVP(dim=dim, n_couplings=couplings, hidden=hidden,
                                    mask="alternating", dequantization="none"), _nll),
              "reference": (ReferenceRealNVP(dim, couplings, hidden), _nll)}
    if zuko is not None:
        models["zuko"] = (zuko.flows.RealNVP(dim, transforms=couplings,
                                             hidden_features=hidden), _zuko_nll)
    return models


def _compare(family: str, dim: int, args: argparse.Namespace, hidden: tuple) -> None:
    """Time one family's models at one D, interleaved, and print a row each."""
    torch.manual_seed(0)
    x = torch.randn(args.batch, dim)
    models = _models(family, dim, args.couplings, hidden)
    companion = models["companion"][0]
    steps = {name: _step(model, nll, x) for name, (model, nll) in models.items()}
    best = dict.fromkeys(steps, math.inf)
    for work in steps.values():
        work()  # warm-up
    for _ in range(args.repeats):
        for name, work in steps.items():
            start = time.perf_counter()
            work()
            best[name] = min(best[name], time.perf_counter() - start)
    base_params, base_time = _count(companion), best["companion"]
    for name, (model, _) in models.items():
        n = _count(model)
        print(f"{dim:5} {name:10} {n:11,} {best[name] * 1e3:7.2f}ms "
              f"{base_time / best[name]:5.2f}x time, {base_params / n:4.2f}x params")


if __name__ == "__main__":
    main()
