"""Binary data: the generated one-pass flip gains, ratio matching and pseudo-likelihood of
the Bernoulli-Bernoulli RBM (generated/bbrbm.py) against the same quantities from D + 1
evaluations of the generated free energy (one per flipped pixel), in this one process.

    .venv/bin/python bench/flips.py [--D 784] [--K 64] [--batch 128] [--repeats 5]

Prints the best-of-repeats time of each (forward and backward to the parameters, float32,
one thread) and their ratio, and the largest difference between the two results.
"""

from __future__ import annotations

import argparse
import time

import torch
from seeds import GENERATED


def _load():
    namespace: dict = {}
    source = (GENERATED / "bbrbm.py").read_text()
    exec(compile(source, "bbrbm.py", "exec"), namespace)  # noqa: S102 - our generated module
    return namespace["BBRBM"]


def _naive_gains(model, v: torch.Tensor) -> torch.Tensor:
    """F(v flipped at i) - F(v) for each i: D + 1 free energies, batched D at a time."""
    base = model.free_energy(v)
    flipped = v[:, None, :].repeat(1, v.shape[1], 1)
    index = torch.arange(v.shape[1])
    flipped[:, index, index] = 1 - flipped[:, index, index]
    return model.free_energy(flipped.reshape(-1, v.shape[1])).reshape(v.shape) - base[:, None]


def _best(work, repeats: int) -> float:
    work()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--D", type=int, default=784)
    parser.add_argument("--K", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = _load()(D=args.D, K=args.K)
    with torch.no_grad():
        model.W.normal_(0, 0.1)
    v = torch.bernoulli(torch.full((args.batch, args.D), 0.3))

    def backward(loss: torch.Tensor) -> None:
        model.zero_grad()
        loss.backward()

    rows = {
        "flip_gain": (lambda: model.flip_gain(v), lambda: _naive_gains(model, v)),
        "pl_loss + backward": (
            lambda: backward(model.pl_loss(v)),
            lambda: backward(torch.nn.functional.softplus(-_naive_gains(model, v))
                             .sum(1).mean())),
        "rm_loss + backward": (
            lambda: backward(model.rm_loss(v)),
            lambda: backward(torch.sigmoid(-_naive_gains(model, v)).square().sum(1).mean())),
    }
    difference = (model.flip_gain(v) - _naive_gains(model, v)).abs().max().item()
    print(f"BB-RBM D={args.D} K={args.K} batch {args.batch}, float32, 1 thread, "
          f"best of {args.repeats}")
    print(f"{'quantity':22} {'generated':>10} {'D+1 F evals':>12} {'ratio':>7}")
    for name, (generated, naive) in rows.items():
        fast, slow = _best(generated, args.repeats), _best(naive, args.repeats)
        print(f"{name:22} {fast * 1e3:8.2f}ms {slow * 1e3:10.2f}ms {slow / fast:6.1f}x")
    print(f"max |flip_gain - naive| = {difference:.2e}")


if __name__ == "__main__":
    main()
