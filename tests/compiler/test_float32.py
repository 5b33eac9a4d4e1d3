"""float32 on large inputs: every public method of every generated module stays finite for
data with |x| ~ 1e3 wherever the mathematics is finite (float64 on the same parameters
and inputs is the reference), and agrees with float64 to float32 accuracy."""

from __future__ import annotations

import inspect

import pytest
import torch

from support import SPECS, load_class, randomise

SPEC_NAMES = sorted(p.stem for p in SPECS.glob("*.edsl"))
SCALE = 1e3  # of the data
N = 6



def _small_sizes(cls) -> dict[str, int]:
    """The constructor's large integer sizes set small (derived sizes follow; small
    settings such as a grid's connectivity keep their defaults)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: 3 for p in parameters if p.annotation in (int, "int") and p.default > 8}


@pytest.fixture(scope="module", params=SPEC_NAMES)
def models(request):
    cls, compiled = load_class(request.param)
    sizes = _small_sizes(cls)
    # trained-looking parameters, not the near-zero initialisation
    single = randomise(cls(dtype=torch.float32, **sizes), 0.3, 3)
    double = cls(dtype=torch.float64, **sizes)
    double.load_state_dict(single.state_dict())
    return request.param, compiled, single, double


def _gaussian_noise(size: int, dtype: torch.dtype) -> torch.distributions.Distribution:
    scale = torch.full((size,), SCALE, dtype=dtype)
    return torch.distributions.Independent(torch.distributions.Normal(0 * scale, scale), 1)


def _calls(model, x: torch.Tensor) -> dict[str, tuple]:
    """Each public method and the arguments it is called with (all inputs explicit, so
    the float32 and float64 models see the same numbers)."""
    generator = torch.Generator().manual_seed(0)

    def noise(*shape):
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    D = x.shape[1]
    if getattr(model, "visible_domain", "real") != "real":  # binary or spin data
        calls = {name: (x,) for name in ("free_energy", "flip_gain", "rm_loss", "pl_loss")}
    else:
        calls = _continuous_calls(x, noise, D)
    return _latent_calls(model, x, calls)


def _continuous_calls(x: torch.Tensor, noise, D: int) -> dict[str, tuple]:  # noqa: N803
    return {
        "free_energy": (x,), "score": (x,), "laplacian": (x,), "sm_loss": (x,),
        "reconstruct": (x,),
        "dsm_loss": (x, 0.1 * SCALE, noise(N, D)),
        "ssm_loss": (x, 1, None, noise(2, N, D)),
        "nce_loss": (x, _gaussian_noise(D, x.dtype), 1.0, SCALE * noise(N, D)),
        "cnce_loss": (x, 0.1 * SCALE, 2, noise(2, N, D)),
    }


TEXT_METHODS = {"extra_repr", "formulas"}  # what a module says about itself, not numbers


def _latent_calls(model, x: torch.Tensor, calls: dict[str, tuple]) -> dict[str, tuple]:
    if hasattr(model, "sm_terms"):
        calls["sm_terms"] = (x,)
    for method, function in vars(type(model)).items():
        if not inspect.isfunction(function) or method in TEXT_METHODS:
            continue
        required = [p for p in inspect.signature(function).parameters.values()
                    if p.default is p.empty]
        if not method.startswith("_") and len(required) == 1:  # self only: log Z, accessors
            calls[method] = ()
    if hasattr(model, "log_prob"):
        calls["log_prob"] = (x,)
        calls["sample"] = (N,)
    hidden = list(getattr(model, "hidden", ()))
    if hidden:
        states = []
        for name in hidden:
            calls[f"mean_{name}"] = (x,)
            calls[f"sample_{name}"] = (x,)
            # a hidden state typical of this data: the conditional mean, rounded for
            # discrete units (the sample_* methods draw, so they are not used here)
            mean = getattr(model.double(), f"mean_{name}")(x)
            states.append(mean.round() if mean.min() >= 0 and mean.max() <= 1 else mean)
        calls["energy"] = (x, *states)
        calls["mean_v"] = tuple(states)
        calls["sample_v"] = tuple(states)
    return calls


def _cast(value, dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype)
    if isinstance(value, torch.distributions.Distribution):
        return _gaussian_noise(value.event_shape[0], dtype)
    return value


def _flatten(result) -> torch.Tensor:
    if isinstance(result, dict):
        return torch.stack([v.reshape(()) for v in result.values()])
    return result


def test_every_method_is_finite_in_float32_for_inputs_of_size_1e3(models):
    name, compiled, single, double = models
    generator = torch.Generator().manual_seed(1)
    x = SCALE * torch.randn(N, double.visible_size, generator=generator, dtype=torch.float64)
    domain = getattr(double, "visible_domain", "real")
    if domain != "real":  # binary or spin data: the entries are 0/1 or -1/+1
        x = torch.bernoulli(torch.full_like(x, 0.5), generator=generator)
        x = 2 * x - 1 if domain == "spin" else x
    reference = double.double()
    calls = _calls(reference, x)
    public = {m for m, f in vars(type(single)).items()
              if inspect.isfunction(f) and not m.startswith("_")} - {"forward", *TEXT_METHODS}
    assert public <= set(calls), f"{name}: untested methods {public - set(calls)}"
    tolerance = 1e-3
    if "torch.logsumexp" in compiled.source:
        # a mixture's derivatives are weighted by a softmax of logits as large as F
        # (|x|^2 / s_k^2 ~ 1e6 here), which float32 holds to eps * |F| absolute: the
        # weights, and what they weight, are that uncertain (finite is still the claim)
        free_energy = reference.free_energy(x).abs().max().item()
        tolerance = max(tolerance, 8 * torch.finfo(torch.float32).eps * free_energy)
    for method, args in calls.items():
        expected = _flatten(getattr(reference, method)(*args))
        single_args = [_cast(a, torch.float32) for a in args]
        actual = _flatten(getattr(single, method)(*single_args))
        if not torch.isfinite(expected).all():
            continue  # the mathematics itself is infinite here
        assert actual.dtype == torch.float32, (name, method)
        assert torch.isfinite(actual).all(), (name, method, actual)
        if method.startswith("sample"):  # float32 and float64 draw differently
            assert actual.shape == expected.shape
            continue
        scale = expected.abs().max().clamp_min(1.0)
        error = (actual.double() - expected).abs().max() / scale
        assert error < tolerance, (name, method, float(error))
