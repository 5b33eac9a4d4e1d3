"""One table of every model on the same held-out digits: `energydsl compare`.

Each seed energy model (with its natural estimators) and each companion model trains on
the digits training split with a fixed budget; the table gives held-out log-likelihood
on the test split in nats per image and bits per dimension, each marked with how it was
obtained:

- exact: closed-form or enumerated normalisers (masked Gaussian, Gaussian RBM, GBRBM
  with a small hidden layer, the BB-RBM's 2^16 hidden states), flows, autoregressive
  models;
- AIS: annealed importance sampling of log Z for the other energy models, +- its
  standard error (AIS is biased low in expectation, so the likelihood is biased high);
- IW bound: the VAE's importance-weighted lower bound.

Continuous models are compared on the discrete digits through the dequantisation bound
log P(k) >= E_u log p((k + u) / 17) - D log 17 (what the flows report); energy models
train on standardised dequantised data, and the change of variables is accounted for.
Binary models see the binarised digits, a different dataset: they get their own rows,
the companion library's and the BB-RBM trained by each family of estimators that applies
to binary data (pseudo-likelihood, ratio matching, CD, PCD). Probabilities of binary data
need no correction.

`conditional=True` (`energydsl compare --conditional`) trains every companion model that
takes a context on p(x | label) and scores it by log p(x | label) on the test labels; its
row says "given the label". The energy models stay unconditional (log p(x)).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from energydsl.models.distribution import likelihood_kind
from energydsl.train.build import label_context
from energydsl.train.config import resolve_device
from energydsl.train.loop import (
    DataMap,
    RunConfig,
    data_kind,
    load_checkpoint,
    model_from_checkpoint,
    prepare,
    train,
)


@dataclass(frozen=True)
class Entry:
    label: str
    model: str
    objective: str | None = None
    sizes: tuple[tuple[str, object], ...] = ()  # spec dimensions / model arguments
    lr: float = 1e-3
    epochs: int = 20
    variant: str = ""  # tells apart two entries of one model and estimator

    @property
    def run(self) -> str:
        """The run directory's name: the model (a spec file's stem), the estimator, the
        variant: dem-sm, bbrbm-pcd, realnvp, maf-spline."""
        stem = "".join(c if c.isalnum() or c in "_-" else "_" for c in Path(self.model).stem)
        return "-".join(filter(None, (stem.strip("_") or "model", self.objective,
                                      self.variant)))


ENTRIES = (
    Entry("masked Gaussian / SM", "masked_gaussian", "sm", lr=0.02),
    Entry("masked Gaussian / NCE", "masked_gaussian", "nce", lr=0.02),
    Entry("masked Gaussian / MLE", "masked_gaussian", "mle", lr=0.02),
    Entry("Gaussian RBM / SM", "gaussian_rbm", "sm", (("K", 16),), lr=3e-3),
    Entry("GBRBM / SM", "gbrbm", "sm", (("K", 12),), lr=0.01),
    Entry("GBRBM / PCD", "gbrbm", "pcd", (("K", 12),), lr=0.01),
    Entry("mPoT / SM", "mpot", "sm", (("K", 16), ("M", 16)), lr=0.01),
    Entry("DEM / SM", "dem", "sm", (("H", 16), ("K", 16)), lr=0.01),
    Entry("DEM / DSM", "dem", "dsm", (("H", 16), ("K", 16)), lr=0.01),
    Entry("NICE", "nice", lr=1e-2),
    Entry("RealNVP", "realnvp", lr=1e-3),
    # MAF with a random ordering per layer (seeded), which beats reversed orderings here
    Entry("MAF", "maf", sizes=(("ordering", "random"),), lr=3e-3),
    Entry("RealNVP (spline)", "realnvp", sizes=(("transform", "spline"),), lr=1e-3,
          variant="spline"),
    Entry("MAF (spline)", "maf", sizes=(("transform", "spline"), ("ordering", "random")),
          lr=3e-3, variant="spline"),
    Entry("Glow", "glow", lr=1e-3),
    Entry("FVSBN (binarised)", "fvsbn", lr=3e-3),
    Entry("NADE (binarised)", "nade", lr=3e-3),
    Entry("MADE (binarised)", "made", lr=3e-3),
    Entry("gated PixelCNN (binarised)", "gated_pixelcnn", lr=3e-3),
    Entry("VAE (binarised)", "vae", lr=3e-3),
    Entry("BB-RBM / PL (binarised)", "bbrbm", "pl", (("K", 16),), lr=0.01),
    Entry("BB-RBM / RM (binarised)", "bbrbm", "rm", (("K", 16),), lr=0.01),
    Entry("BB-RBM / CD (binarised)", "bbrbm", "cd", (("K", 16),), lr=0.01),
    Entry("BB-RBM / PCD (binarised)", "bbrbm", "pcd", (("K", 16),), lr=0.01),
)


@dataclass
class Row:
    label: str
    nats: float  # held-out log-likelihood per image
    stderr: float
    bits_per_dim: float
    how: str
    seconds: float
    parameters: int = 0  # learnt numbers (Adam keeps two more of each)
    model: str = ""  # the registered model or spec
    binarised: bool = False  # scored on the binarised digits (another, easier data set)


def held_out(model: torch.nn.Module, x: torch.Tensor, data_map: DataMap,
             ais_chains: int = 200, ais_temperatures: int = 500, seed: int = 0,
             progress: bool | None = None, context: dict[str, torch.Tensor] | None = None
             ) -> tuple[float, float, str]:
    """Mean log-likelihood of the rows x (model space) in data space, its standard error
    and how it was obtained. progress: AIS's bar (None: only on a terminal). context: a
    conditional companion model's {"context": one-hot labels of x}: log p(x | label)."""
    correction = -data_map.log_volume() - data_map.log_jacobian
    generator = torch.Generator(device=x.device).manual_seed(seed)  # where the draws are
    torch.manual_seed(seed)
    if not hasattr(model, "free_energy"):
        with torch.no_grad():
            values = model.log_prob(x, **(context or {})).double()
        how = likelihood_kind(model)
        return float(values.mean()), float(values.std() / math.sqrt(len(values))), how
    try:
        with torch.no_grad():
            values = model.log_prob(x).double()
        return (float(values.mean()) + correction,
                float(values.std() / math.sqrt(len(values))), "exact")
    except (AttributeError, ValueError):
        from energydsl.train.ais import ais

        model64 = model.double()
        result = ais(model64, n_chains=ais_chains, n_temperatures=ais_temperatures,
                     generator=generator, progress=progress)
        with torch.no_grad():
            values = -model64.free_energy(x.double()) - result.log_z
        sampling = float(values.std() / math.sqrt(len(values)))
        return (float(values.mean()) + correction, math.hypot(sampling, result.stderr),
                f"AIS ({ais_chains} chains x {ais_temperatures} temperatures)")


def compare(out: Path, entries: tuple[Entry, ...] = ENTRIES, epochs: int | None = None,
            ais_chains: int = 200, ais_temperatures: int = 500, seed: int = 0,
            log=print, progress: bool | None = None, device: str = "auto",
            conditional: bool = False) -> list[Row]:
    """Train every entry into out/<model>-<estimator>/, then evaluate; return the rows of
    the table. progress: tqdm bars on stderr over the models, each run's epochs and the
    AIS runs (None: only on a terminal; False: none). device: where models train and are
    evaluated (energydsl.train.config.resolve_device). conditional: the companion models
    that take a context learn and are scored on p(x | label) (see the module docstring)."""
    from tqdm import tqdm

    from energydsl.models import CONDITIONAL

    names = [entry.run for entry in entries]
    if len(set(names)) < len(names):
        raise ValueError(f"two entries would share a run directory: {names}")
    where = resolve_device(device)  # before any training: a wrong device fails at once
    rows = []
    shown = tqdm(entries, desc="compare", unit="model", leave=False,
                 disable=None if progress is None else not progress)
    for entry in shown:
        shown.set_postfix_str(entry.run, refresh=True)
        config = RunConfig(model=entry.model, objective=entry.objective,
                           epochs=epochs or entry.epochs, lr=entry.lr, seed=seed,
                           sizes=dict(entry.sizes), device=device,
                           conditional=conditional and entry.model in CONDITIONAL)
        run = out / entry.run
        began = time.perf_counter()
        train(config, run, log=lambda _: None, overwrite=True, progress=progress)
        seconds = time.perf_counter() - began
        checkpoint_path = run / "checkpoint.pt"
        model, _, data_map = model_from_checkpoint(load_checkpoint(checkpoint_path),
                                                   checkpoint_path)
        model.to(where).eval()
        kind = data_kind(config)  # builds a companion model to ask it: once
        prepared = prepare(config, kind)
        test = prepared.test.to(where)
        nats, stderr, how = held_out(model, test, data_map, ais_chains, ais_temperatures, seed,
                                     progress, label_context(model, config, prepared, 2))
        label = f"{entry.label} given the label" if config.conditional else entry.label
        dim = test.shape[1]
        parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append(Row(label, nats, stderr, -nats / (dim * math.log(2)), how, seconds,
                        parameters, entry.model, kind in ("binary", "spin")))
        log(f"{label}: {nats:.2f} nats ({how}), {seconds:.1f} s")
    return rows


FLOWS = ("nice", "realnvp", "maf", "iaf", "glow")


def verdict(rows: list[Row]) -> str:
    """Which model is best on each data set, and the flows ranked (MAF against RealNVP):
    what the table's reader looks for, said in words. Two rows closer than twice the
    larger standard error are called level."""
    def best(group: list[Row]) -> Row:
        return max(group, key=lambda row: row.nats)

    def level(a: Row, b: Row) -> bool:
        return a.nats - b.nats < 2 * max(a.stderr, b.stderr)

    lines = []
    for binarised, what in ((False, "on the grey-level digits"), (True, "on the binarised digits")):
        group = [row for row in rows if row.binarised == binarised]
        if group:
            top = best(group)
            lines.append(f"- Best {what}: {top.label}, {top.nats:.2f} +- {top.stderr:.2f} nats "
                         f"per image ({top.parameters:,} parameters).")
    flows = sorted((row for row in rows if row.model in FLOWS), key=lambda row: -row.nats)
    if len(flows) > 1:
        ranked = []
        for above, row in zip([None, *flows], flows, strict=False):
            sign = " ~ " if above is not None and level(above, row) else " > "
            ranked.append(("" if above is None else sign) + f"{row.label} ({row.nats:.2f})")
        lines.append("- Flows, best first (~: level within two standard errors): "
                     + "".join(ranked) + ".")
    return "\n".join(lines)


def table(rows: list[Row]) -> str:
    lines = ["| model / estimator | test log-lik. (nats) | bits/dim | how | train time | "
             "parameters |",
             "|---|---:|---:|---|---:|---:|"]
    for row in rows:
        lines.append(f"| {row.label} | {row.nats:.2f} +- {row.stderr:.2f} | "
                     f"{row.bits_per_dim:.3f} | {row.how} | {row.seconds:.1f} s | "
                     f"{row.parameters:,} |")
    return "\n".join(lines)
