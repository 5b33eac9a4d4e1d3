"""torch.compile on every generated seed module, and the hand-written closed forms that
bench/run.py times (bench/hand.py) against the generated sm_loss.

A compiled training step (sm_loss, backward, SGD step) must give the eager loss values and
the eager updated parameters; each hand form must equal the generated loss and its
parameter gradients in float64 (an independent check of both)."""

from __future__ import annotations

import copy
import importlib.util
import shutil
import sys

import pytest
import torch
import torch._dynamo

from support import ROOT


def _load_bench(name: str):
    """bench/<name>.py as a module (bench/ is a directory of scripts, not a package)."""
    qualified = f"_energydsl_bench_{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, ROOT / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
    return sys.modules[qualified]


# torch's own deprecation notice from inside inductor, not ours
pytestmark = pytest.mark.filterwarnings("ignore:`torch._prims_common.check`:FutureWarning")

seeds = _load_bench("seeds")
hand = _load_bench("hand")

MODELS = list(seeds.SEEDS)
D, K, BATCH = 16, 4, 8          # the masked Gaussian on a 4 x 4 grid


def _step(model: torch.nn.Module, lr: float = 0.05):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def step(x: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = model.sm_loss(x)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


@pytest.mark.parametrize("name", MODELS)
def test_compiled_training_step_matches_eager(name):
    if not hasattr(torch, "compile") or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("torch.compile (or the C compiler its CPU backend needs) is unavailable")
    torch._dynamo.reset()
    eager = seeds.make_model(name, D, K, dtype=torch.float32, seed=0)
    compiled_model = copy.deepcopy(eager)
    before = [p.detach().clone() for p in eager.parameters()]
    x = seeds.make_data(D, BATCH, dtype=torch.float32, seed=1)
    reference = eager.sm_loss(x).detach()
    eager_step = _step(eager)
    compiled_step = torch.compile(_step(compiled_model), mode=None, dynamic=False)
    for i in range(2):          # the second step runs from the updated parameters
        got, expected = compiled_step(x), eager_step(x)
        if i == 0:              # the compiled graph's sm_loss is the model's sm_loss
            torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    moved = False
    for (label, updated), compiled_value, old in zip(eager.named_parameters(),
                                                     compiled_model.parameters(), before,
                                                     strict=True):
        torch.testing.assert_close(compiled_value, updated, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, label=label: f"{name}.{label}: {m}")
        moved = moved or not torch.equal(updated, old)
    assert moved, "the SGD steps changed no parameter"


# (model, constructor overrides): odd sizes, non-default constants, a non-square grid
HAND_CASES = [
    ("DEM", {"D": 12, "H": 5, "K": 3, "sigma": 0.7}),
    ("DEM", {"D": 12, "H": 9, "K": 3}),  # H >= 8: the quadratic term over pairs h <= h'
    ("DEM3", {"D": 12, "H": 5, "K": 3, "sigma": 0.7}),
    ("DEM5", {"D": 7, "H": 9, "K": 4}),
    ("GBRBM", {"D": 12, "K": 5}),
    ("GaussianRBM", {"D": 12, "K": 5}),
    ("MPoT", {"D": 12, "K": 4, "M": 3, "gamma": 1.3}),
    ("MaskedGaussian", {"height": 4, "width": 5}),
    ("MaskedGaussian", {"height": 5, "width": 3, "connectivity": 4}),
]


@pytest.mark.parametrize(("name", "sizes", "form"),
                         [(name, sizes, form) for name, sizes in HAND_CASES
                          for form in hand.HAND[name]])
def test_hand_form_equals_generated_sm_loss(name, sizes, form):
    model = seeds.make_model(name, D, K, dtype=torch.float64, seed=2, **sizes)
    with torch.no_grad():       # larger parameters than the benchmark's, all terms matter
        for parameter in model.parameters():
            parameter.mul_(3.0)
    x = 1.5 * seeds.make_data(model.D, 7, dtype=torch.float64, seed=3)
    parameters = list(model.parameters())
    expected = model.sm_loss(x)
    got = hand.HAND[name][form](model, x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    expected_grads = torch.autograd.grad(expected, parameters, allow_unused=True)
    got_grads = torch.autograd.grad(got, parameters, allow_unused=True)
    for (label, _), g, e in zip(model.named_parameters(), got_grads, expected_grads,
                                strict=True):
        if e is None:           # a parameter sm_loss does not use (e.g. an NCE log Z)
            assert g is None or not g.any(), label
            continue
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10, msg=f"d loss / d {label}")
