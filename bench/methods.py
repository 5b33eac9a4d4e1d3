"""What bench/run.py times: the score-matching losses that do not come from the code
generator (exact SM by autograd, sliced SM), a timer and a peak-memory probe.

Every loss is f(model, x) -> scalar and uses only the model's `free_energy` or `score`.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable

import torch

Loss = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def _autograd_score(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """-dF/dx by autograd, kept differentiable (create_graph)."""
    energy = model.free_energy(x).sum()
    return -torch.autograd.grad(energy, x, create_graph=True)[0]


class Stopped(Exception):
    """A loss gave up at its time limit: `seconds` spent, `done` of `total` steps."""

    def __init__(self, seconds: float, done: int, total: int) -> None:
        super().__init__(f"stopped after {seconds:.0f} s at {done} of {total} dimensions")
        self.seconds, self.done, self.total = seconds, done, total


def exact_autograd(model: torch.nn.Module, x: torch.Tensor,
                   limit: float | None = None) -> torch.Tensor:
    """Exact SM by autograd: the score by one backward pass, then one more backward pass
    per input dimension for the diagonal of its Jacobian (what torchebm-style code does).
    With `limit` (seconds), raises Stopped once the loop has run that long."""
    start = time.perf_counter()
    x = x.detach().requires_grad_(True)
    score = _autograd_score(model, x)
    diagonal = []
    for i in range(x.shape[1]):
        diagonal.append(torch.autograd.grad(score[:, i].sum(), x, create_graph=True)[0][:, i])
        if limit is not None and time.perf_counter() - start > limit:
            raise Stopped(time.perf_counter() - start, i + 1, x.shape[1])
    return (0.5 * score.square().sum(1) + torch.stack(diagonal, 1).sum(1)).mean()


def exact_func(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Exact SM with torch.func: the Hessian diagonal as D Hessian-vector products
    (forward-over-reverse, jvp of the autograd score) batched by vmap over the basis vectors,
    in chunks of at most ~16M numbers. Building the full per-sample Jacobian instead (vmap of
    jacrev/jacfwd) needs ~20 GB at D=784 and was 15-40x slower, so it is not offered."""
    from torch.func import grad, jvp, vmap

    n, d = x.shape

    def score(y: torch.Tensor) -> torch.Tensor:
        return -grad(lambda z: model.free_energy(z).sum())(y)

    def column(e: torch.Tensor) -> torch.Tensor:        # d score_i / d x_i for e = e_i
        tangent = e.expand(n, d)
        return (jvp(score, (x,), (tangent,))[1] * tangent).sum(1)

    chunk = max(1, min(d, 2**24 // (n * d)))
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    diagonal = vmap(column, chunk_size=chunk)(eye)      # [D, N]
    values = score(x)
    return (0.5 * values.square().sum(1) + diagonal.sum(0)).mean()


def _sliced(score: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sliced SM with one Gaussian projection per sample, variance-reduced form (Song et al.
    2019, SSM-VR): v^T (d score/dx) v + 1/2 |score|^2, by one Hessian-vector product."""
    v = torch.randn_like(x)
    hv = torch.autograd.grad((score * v).sum(), x, create_graph=True)[0]
    return ((hv * v).sum(1) + 0.5 * score.square().sum(1)).mean()


def sliced_autograd(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sliced SM, one projection, from the free energy only (score by autograd)."""
    x = x.detach().requires_grad_(True)
    return _sliced(_autograd_score(model, x), x)


def sliced_model(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sliced SM, one projection, from the generated closed-form score."""
    x = x.detach().requires_grad_(True)
    return _sliced(model.score(x), x)


def generated(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.sm_loss(x)


def training_call(model: torch.nn.Module, loss: Loss, x: torch.Tensor) -> Callable[[], None]:
    """One loss evaluation plus backward to the parameter gradients (grads reset first)."""
    parameters = list(model.parameters())

    def call() -> None:
        for parameter in parameters:
            parameter.grad = None
        loss(model, x).backward()

    return call


class Timer:
    """Best-of-`repeats` wall time per call, after warm-up, in seconds. Fast calls run in
    blocks of at least `block` seconds; slow calls (> `slow` s) get at most `budget`
    seconds of repeats, the warm-up counting as one."""

    def __init__(self, device: torch.device, repeats: int, block: float = 0.03,
                 slow: float = 0.5, budget: float = 6.0) -> None:
        self.device, self.repeats = device, repeats
        self.block, self.slow, self.budget = block, slow, budget

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def once(self, call: Callable[[], object], number: int = 1) -> float:
        self._sync()
        start = time.perf_counter()
        for _ in range(number):
            call()
        self._sync()
        return (time.perf_counter() - start) / number

    def best(self, call: Callable[[], object]) -> tuple[float, int]:
        """(best seconds per call, number of timed runs)."""
        return self.best_group({"call": call})["call"]

    def best_group(self, calls: dict[str, Callable[[], object]]) -> dict[str, tuple[float, int]]:
        """best() for several calls at once, interleaved: each round times every fast call
        once, so all of them see the same quiet and busy moments of a shared machine. Each
        fast call's timed block follows one untimed call of its own, so the caches the
        call before it left are not timed (after a 512^3 SGEMM, a DEM step took 11% longer
        than after itself), as in a training loop, where steps follow steps."""
        out: dict[str, tuple[float, int]] = {}
        fast: dict[str, tuple[Callable[[], object], int]] = {}
        for key, call in calls.items():
            first = self.once(call)
            if first > self.slow:
                runs = [first]
                while len(runs) < self.repeats and sum(runs) + min(runs) <= self.budget:
                    runs.append(self.once(call))
                out[key] = (min(runs), len(runs))
            else:
                second = self.once(call)
                fast[key] = (call, max(1, math.ceil(self.block / max(second, 1e-7))))
        best = dict.fromkeys(fast, float("inf"))
        for _ in range(self.repeats):
            for key, (call, number) in fast.items():
                call()
                best[key] = min(best[key], self.once(call, number))
        out.update({key: (seconds, self.repeats) for key, seconds in best.items()})
        return {key: out[key] for key in calls}


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ chatter (it writes to file descriptor 2 directly)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def operation_count(call: Callable[[], object]) -> int:
    """How many torch operators (ATen calls, views included) one call dispatches, forward
    and backward: the per-op overhead that torch.compile removes, which dominates these
    small tensors."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            Counter.count += 1
            return func(*args, **(kwargs or {}))

    call()  # warm-up: lazy initialisation is not the method's work
    with Counter():
        call()
    return Counter.count


def peak_memory(call: Callable[[], object], device: torch.device,
                model: torch.nn.Module) -> float | None:
    """Peak bytes allocated by torch during one call, above what was live before it.

    CUDA: torch.cuda.max_memory_allocated. CPU: torch.profiler with profile_memory=True
    records every allocation and free of torch's CPU allocator as "[memory]" events
    (+/- bytes); the running sum in time order peaks at the answer. Tensors allocated before
    the call (parameters, data) are not counted; the gradients the call creates are.
    The old gradients are freed before profiling: the profiler reports frees of blocks it
    did not see allocated with stale sizes. None if its event list is unavailable."""
    call()
    for parameter in model.parameters():
        parameter.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    try:
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU],
                                      profile_memory=True) as prof:
            call()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except (AttributeError, RuntimeError):
        return None
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return float(peak)
