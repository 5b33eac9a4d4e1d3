"""The parts of the benchmark, in the order bench/run.py runs them; each fills one entry of
the results dictionary that bench/report.py turns into RESULTS.md."""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import methods
import torch
from hand import HAND
from seeds import ROOT, SEEDS, SPECS, load_class, make_data, make_model
from tqdm import tqdm

D_MAIN = 784
K_MAIN = 64
GENERATED = "generated"
HAND_BEST = "hand"
LOOP = "exact, autograd loop"
FUNC = "exact, torch.func"
SLICED = "sliced, autograd score"
SLICED_MODEL = "sliced, model score"
BASELINES = {
    GENERATED: methods.generated,
    LOOP: methods.exact_autograd,
    FUNC: methods.exact_func,
    SLICED: methods.sliced_autograd,
    SLICED_MODEL: methods.sliced_model,
}
FUNC_OVER_LOOP = 2.5   # torch.func time / loop time, measured here (DEM 1.9x, masked 4x)
SWEPT = ("DEM", "GBRBM", "GaussianRBM", "MPoT", "MaskedGaussian")  # the sweeps' models
GEMM_SIDE = 512        # the square SGEMM whose rate the DEM is measured against


class CpuLoad:
    """How busy other processes kept the CPUs between start() and stop(): all CPUs'
    non-idle time (/proc/stat) minus this process's and its children's CPU time."""

    def start(self) -> None:
        self.begin = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        times = os.times()
        ours = times.user + times.system + times.children_user + times.children_system
        return sum(fields) / tick, (fields[3] + fields[4]) / tick, ours

    def others(self) -> float | None:
        end = self._sample()
        if self.begin is None or end is None or end[0] <= self.begin[0]:
            return None
        capacity = end[0] - self.begin[0]
        busy = capacity - (end[1] - self.begin[1])
        return max(0.0, busy - (end[2] - self.begin[2])) / capacity


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _relative(value: torch.Tensor, reference: torch.Tensor) -> float:
    scale = max(float(reference.abs().max()), 1e-12)
    return float((value - reference).abs().max()) / scale


class Bench:
    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args = args
        self.quick = args.quick
        torch.set_num_threads(args.threads)
        self.device = torch.device(args.device)
        self.timer = methods.Timer(self.device, args.repeats, budget=2 * args.slow_cap)
        self.classes = {name: load_class(name) for name in SEEDS}
        self.models: dict[tuple, torch.nn.Module] = {}
        self.data: dict[tuple, torch.Tensor] = {}
        self.times: dict[tuple, dict] = {}
        self.sizes_d = (64, 256, 784) if self.quick else (64, 256, 784, 1600, 3136)
        self.sizes_n = (32, 128) if self.quick else (32, 128, 512)
        command = " ".join(["bench/run.py", *argv[1:]])
        # What energydsl's commands do: freed tensors stay in the process (energydsl.memory);
        # every method of the run, references included, runs under the same allocator.
        from energydsl.memory import keep_freed_memory

        kept = keep_freed_memory()
        self.results: dict = {"meta": {
            "command": f".venv/bin/python {command}",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(self.device),
            "dtype": "float32", "batch": args.batch, "D": D_MAIN, "K": K_MAIN,
            "repeats": args.repeats, "quick": self.quick, "slow_cap_s": args.slow_cap,
            "exact_limit_s": args.exact_limit, "kept_freed_memory": kept,
        }}

    # -- helpers ---------------------------------------------------------------------------

    def model(self, name: str, d: int) -> torch.nn.Module:
        key = (name, d)
        if key not in self.models:
            self.models.clear()              # one model at a time: the big ones are big
            self.models[key] = make_model(name, d, K_MAIN, device=self.device,
                                          cls=self.classes[name])
        return self.models[key]

    def batch(self, d: int, n: int) -> torch.Tensor:
        if (d, n) not in self.data:
            self.data[(d, n)] = make_data(d, n, device=self.device)
        return self.data[(d, n)]

    def loss(self, name: str, method: str) -> methods.Loss:
        if method == LOOP:
            return functools.partial(methods.exact_autograd, limit=self.args.exact_limit)
        return BASELINES[method] if method in BASELINES else HAND[name][method]

    def time(self, name: str, d: int, n: int, method: str, estimate: float | None = None,
             cap: float | None = None) -> dict:
        """Milliseconds per loss + backward (cached), or a note saying why there is none."""
        if estimate is not None and cap is not None and estimate > cap:
            key = (name, d, n, method)
            self.times.setdefault(key, {"ms": None,
                                        "note": f"skipped (est. {estimate:.0f} s/call)"})
            return self.times[key]
        return self.time_group(name, d, n, [method])[method]

    def time_group(self, name: str, d: int, n: int, method_list: list[str],
                   again: bool = False) -> dict:
        """time() for several methods on the same model and data, interleaved. again=True
        times them once more and keeps the better time (a second chance after a burst of
        load from other processes)."""
        model, x = self.model(name, d), self.batch(d, n)
        previous = {m: self.times.pop((name, d, n, m)) for m in method_list
                    if again and self.times.get((name, d, n, m), {}).get("ms") is not None}
        calls = {method: methods.training_call(model, self.loss(name, method), x)
                 for method in method_list if (name, d, n, method) not in self.times}
        try:
            measured = self.timer.best_group(calls)
        except (RuntimeError, MemoryError, methods.Stopped):   # time the others alone
            measured = {}
            for method, call in calls.items():
                try:
                    measured.update(self.timer.best_group({method: call}))
                except methods.Stopped as stop:     # its time so far is a lower bound
                    self.times[(name, d, n, method)] = {
                        "ms": None, "lower_ms": 1e3 * stop.seconds,
                        "note": f"> {stop.seconds:.0f} s (stopped at {stop.done}/{stop.total}"
                                " dims)"}
                except (RuntimeError, MemoryError) as error:
                    note = f"error: {type(error).__name__}: {error}"[:200]
                    self.times[(name, d, n, method)] = {"ms": None, "note": note}
        for method, (seconds, runs) in measured.items():
            entry = {"ms": 1e3 * seconds, "runs": runs}
            if method in previous:
                old = previous[method]
                entry = {"ms": min(old["ms"], entry["ms"]), "runs": old["runs"] + runs}
            self.times[(name, d, n, method)] = entry
        return {method: self.times[(name, d, n, method)] for method in method_list}

    # -- sections ----------------------------------------------------------------------------

    def run(self) -> dict:
        start = time.perf_counter()
        load = CpuLoad()
        load.start()
        self.check()
        self.main()
        self.memory()
        self.gemm()
        self.sweep_d()
        self.sweep_n()
        self.spec_compile()
        self.startup()
        if not self.args.no_torch_compile:
            self.torch_compile()
        self.results["meta"]["others_busy"] = load.others()
        self.results["meta"]["elapsed_s"] = time.perf_counter() - start
        from report import evaluate_targets

        evaluate_targets(self.results)
        return self.results

    def check(self) -> None:
        """Every exact form against the generated sm_loss, float64, small sizes: the loss
        and every parameter gradient (relative to the largest entry)."""
        rows = []
        names = [(name, method) for name in SEEDS for method in [*HAND[name], LOOP, FUNC]]
        for name, method in tqdm(names, desc="float64 check", disable=None):
            model = make_model(name, 64, 8, dtype=torch.float64, device=self.device,
                               cls=self.classes[name])
            x = make_data(64, 16, dtype=torch.float64, device=self.device)
            parameters = list(model.parameters())
            reference = model.sm_loss(x)
            expected = torch.autograd.grad(reference, parameters, allow_unused=True)
            value = self.loss(name, method)(model, x)
            got = torch.autograd.grad(value, parameters, allow_unused=True)
            grad_error = max((_relative(g, e) if g is not None and e is not None
                              else (0.0 if g is None and e is None else float("inf"))
                              for g, e in zip(got, expected, strict=True)), default=0.0)
            rows.append({"model": name, "method": method,
                         "loss": _relative(value.detach(), reference.detach()),
                         "grad": grad_error})
        self.results["check"] = rows

    def main(self) -> None:
        n = self.args.batch
        table: dict = {}
        for name in tqdm(list(SEEDS), desc=f"D={D_MAIN} table", disable=None):
            fast = [GENERATED, *HAND[name], SLICED, SLICED_MODEL]
            table[name] = self.time_group(name, D_MAIN, n, fast)
            table[name][LOOP] = loop = self.time(name, D_MAIN, n, LOOP)
            loop_ms = loop.get("ms") or loop.get("lower_ms") or float("inf")
            estimate = FUNC_OVER_LOOP * loop_ms / 1e3
            table[name][FUNC] = self.time(name, D_MAIN, n, FUNC, estimate,
                                          3 * self.args.slow_cap)
        for name in tqdm(list(SEEDS), desc=f"D={D_MAIN} table, 2nd pass", disable=None):
            fast = [GENERATED, *HAND[name], SLICED, SLICED_MODEL]
            table[name].update(self.time_group(name, D_MAIN, n, fast, again=True))
        self.results["main"] = table

    def memory(self) -> None:
        n = self.args.batch
        table: dict = {}
        jobs = [(name, method) for name in SEEDS
                for method in [GENERATED, *HAND[name], SLICED, SLICED_MODEL]]
        for name, method in tqdm(jobs, desc="peak memory", disable=None):
            model = self.model(name, D_MAIN)
            call = methods.training_call(model, self.loss(name, method), self.batch(D_MAIN, n))
            table.setdefault(name, {})[method] = methods.peak_memory(call, self.device, model)
        self.results["memory"] = table
        self.results["memory_method"] = ("torch.cuda.max_memory_allocated" if
                                         self.device.type == "cuda" else "torch.profiler")
        counts: dict = {}
        for name in SEEDS:
            for method in (GENERATED, HAND_BEST):
                model = self.model(name, D_MAIN)
                call = methods.training_call(model, self.loss(name, method),
                                             self.batch(D_MAIN, n))
                counts.setdefault(name, {})[method] = methods.operation_count(call)
        self.results["operations"] = counts

    def gemm(self) -> None:
        """The DEM against this machine's matrix-multiply rate: the one-thread (or
        --threads) SGEMM rate of a GEMM_SIDE^3 product, and the FLOPs of one DEM loss +
        backward in each form (torch's FlopCounterMode: matrix products only) at the main
        table's sizes. The report divides the best form's FLOPs by the generated time,
        timed interleaved with the SGEMM (four times the repeats: best of 20 by default), so
        both see the same load."""
        from torch.utils.flop_counter import FlopCounterMode

        a = torch.randn(GEMM_SIDE, GEMM_SIDE, device=self.device)
        b = torch.randn(GEMM_SIDE, GEMM_SIDE, device=self.device)
        step = methods.training_call(self.model("DEM", D_MAIN), self.loss("DEM", GENERATED),
                                     self.batch(D_MAIN, self.args.batch))
        timer = methods.Timer(self.device, 4 * self.timer.repeats)
        measured = timer.best_group({"sgemm": lambda: a @ b, GENERATED: step})
        seconds = measured["sgemm"][0]
        flops: dict = {}
        for method in (GENERATED, *HAND["DEM"]):
            model = self.model("DEM", D_MAIN)
            call = methods.training_call(model, self.loss("DEM", method),
                                         self.batch(D_MAIN, self.args.batch))
            with FlopCounterMode(display=False) as counter:
                call()
            flops[method] = counter.get_total_flops()
        self.results["gemm"] = {"side": GEMM_SIDE, "gflops": 2 * GEMM_SIDE**3 / seconds / 1e9,
                                "flops": flops, "generated_ms": 1e3 * measured[GENERATED][0]}

    def sweep_d(self) -> None:
        n = self.args.batch
        rows = []
        jobs = [(name, d) for name in SWEPT for d in self.sizes_d]
        for name, d in tqdm(jobs, desc="sweep over D", disable=None):
            entries = self.time_group(name, d, n, [GENERATED, HAND_BEST, SLICED])
            # exact by autograd: one backward per dimension, so time grows like D^2
            for method in (LOOP, FUNC):
                entries[method] = self.time(name, d, n, method, self._estimate(name, d, n, method),
                                            self.args.slow_cap)
            rows += [{"model": name, "D": d, "method": method, **entry}
                     for method, entry in entries.items()]
        self.results["sweep_d"] = rows

    def _estimate(self, name: str, d: int, n: int, method: str) -> float | None:
        """Seconds per call of an exact method at D=d from the largest smaller D measured
        (its time grows like D^2); torch.func from the loop if it has no time yet."""
        def known(method: str, dd: int) -> float | None:
            entry = self.times.get((name, dd, n, method), {})
            return entry.get("ms") or entry.get("lower_ms")

        for dd in sorted((dd for dd in self.sizes_d if dd < d), reverse=True):
            if (ms := known(method, dd)) is not None:
                return ms / 1e3 * (d / dd) ** 2
        if method == FUNC and (ms := known(LOOP, d)) is not None:
            return FUNC_OVER_LOOP * ms / 1e3
        return None

    def sweep_n(self) -> None:
        rows = []
        jobs = [(name, n) for name in SWEPT for n in self.sizes_n]
        for name, n in tqdm(jobs, desc="sweep over batch", disable=None):
            entries = self.time_group(name, D_MAIN, n, [GENERATED, HAND_BEST, SLICED])
            rows += [{"model": name, "N": n, "method": method, **entry}
                     for method, entry in entries.items()]
        self.results["sweep_n"] = rows

    def spec_compile(self) -> None:
        """Warm: compile_source in this process (imports done, SymPy's cache cleared before
        each run). Cold: `energydsl compile specs/*.edsl -o TMP` in a fresh process."""
        from sympy.core.cache import clear_cache

        from energydsl.compiler.driver import compile_source

        specs = sorted(SPECS.glob("*.edsl"))
        warm: dict = {}
        runs = 1 if self.quick else 3
        for path in tqdm(specs, desc="compile specs (warm)", disable=None):
            text, shown = path.read_text(), f"specs/{path.name}"
            try:
                compile_source(text, shown)                      # warm-up
                best = float("inf")
                for _ in range(runs):
                    clear_cache()
                    start = time.perf_counter()
                    compile_source(text, shown)
                    best = min(best, time.perf_counter() - start)
                warm[path.stem] = {"s": best}
            except Exception as error:   # the compiler is being edited: report, go on
                warm[path.stem] = {"s": None, "note": f"{type(error).__name__}: {error}"[:200]}
        script = Path(sys.executable).with_name("energydsl")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "energydsl"]
        cold: dict = {"s": None, "runs": 0, "in_sync": None}
        with tempfile.TemporaryDirectory(prefix="energydsl-bench-") as tmp:
            argv = [*command, "compile", *(f"specs/{p.name}" for p in specs), "-o", tmp]
            for _ in tqdm(range(1 if self.quick else 2), desc="compile specs (cold)",
                          disable=None):
                start = time.perf_counter()
                done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                                      timeout=300)
                elapsed = time.perf_counter() - start
                if done.returncode != 0:
                    cold["note"] = f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
                    break
                cold["s"] = elapsed if cold["s"] is None else min(cold["s"], elapsed)
                cold["runs"] += 1
            if cold["s"] is not None:
                stale = [p.stem for p in specs
                         if (Path(tmp) / f"{p.stem}.py").read_bytes()
                         != (ROOT / "generated" / f"{p.stem}.py").read_bytes()]
                cold["in_sync"] = not stale
                cold["stale"] = stale
        cold["command"] = "energydsl compile specs/*.edsl -o <tmpdir>"
        self.results["spec_compile"] = {"warm": warm, "cold": cold, "warm_runs": runs}

    def startup(self) -> None:
        """What a user waits for at a short command, each in a fresh process, best of a
        few: `energydsl compile specs/dem.edsl` (Python start-up and imports included), and
        `energydsl train` on the digits up to its first optimiser step (the seconds from
        the package's import, which the run records in history.json)."""
        script = Path(sys.executable).with_name("energydsl")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "energydsl"]
        result: dict = {"compile_s": None, "first_step_s": None}
        with tempfile.TemporaryDirectory(prefix="energydsl-bench-") as tmp:
            for _ in tqdm(range(2 if self.quick else 3), desc="start-up", disable=None):
                start = time.perf_counter()
                done = subprocess.run([*command, "compile", "specs/dem.edsl", "-o", tmp],
                                      cwd=ROOT, capture_output=True, text=True, timeout=300)
                elapsed = time.perf_counter() - start
                if done.returncode == 0:
                    result["compile_s"] = min(elapsed, result["compile_s"] or elapsed)
                run = Path(tmp) / "run"
                done = subprocess.run(
                    [*command, "train", "specs/dem.edsl", "--size", "H=16", "--size", "K=16",
                     "--epochs", "1", "--out", str(run), "--overwrite"],
                    cwd=ROOT, capture_output=True, text=True, timeout=600)
                if done.returncode == 0:
                    import json

                    epochs = json.loads((run / "history.json").read_text())["epochs"]
                    seconds = epochs[0].get("first_step_seconds")
                    if seconds is not None:
                        result["first_step_s"] = min(seconds, result["first_step_s"] or seconds)
        result["commands"] = ["energydsl compile specs/dem.edsl -o <tmpdir>",
                              "energydsl train specs/dem.edsl --size H=16 --size K=16 "
                              "--epochs 1 --out <tmpdir>/run"]
        self.results["startup"] = result

    def torch_compile(self) -> None:
        """A training step (sm_loss, backward, SGD step) compiled with torch.compile against
        the same step in eager mode from identical parameters: values, speed, compile time.
        Then exact SM by autograd, which torch.compile cannot compile (double backward)."""
        import torch._dynamo

        names = ["DEM"] if self.quick else list(SEEDS)
        n, steps = self.args.batch, 3
        table: dict = {}
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
        for name in tqdm(names, desc="torch.compile", disable=None):
            torch._dynamo.reset()
            eager = make_model(name, D_MAIN, K_MAIN, device=self.device,
                               cls=self.classes[name])
            compiled_model = copy.deepcopy(eager)
            x = self.batch(D_MAIN, n)
            step = _training_step(eager)
            compiled = torch.compile(_training_step(compiled_model), mode=None, dynamic=False)
            start = time.perf_counter()
            try:
                losses_c = [compiled(x)]
            except Exception as error:
                table[name] = {"note": f"{type(error).__name__}: {error}"[:300]}
                continue
            compile_s = time.perf_counter() - start
            losses_c += [compiled(x) for _ in range(steps - 1)]
            losses_e = [step(x) for _ in range(steps)]
            loss_diff = max(_relative(c, e) for c, e in zip(losses_c, losses_e, strict=True))
            param_diff = max(_relative(c.detach(), e.detach()) for c, e in
                             zip(compiled_model.parameters(), eager.parameters(), strict=True))
            eager_s, _ = self.timer.best(lambda x=x, step=step: step(x))
            compiled_s, _ = self.timer.best(lambda x=x, compiled=compiled: compiled(x))
            table[name] = {"compile_s": compile_s, "eager_ms": 1e3 * eager_s,
                           "compiled_ms": 1e3 * compiled_s, "speedup": eager_s / compiled_s,
                           "loss_diff": loss_diff, "param_diff": param_diff,
                           "same": loss_diff < 1e-4 and param_diff < 1e-4}
        self.results["torch_compile"] = table
        self.results["exact_compile"] = self._exact_cannot_compile()
        torch._dynamo.reset()

    def _exact_cannot_compile(self) -> dict:
        import torch._dynamo

        torch._dynamo.reset()
        model = make_model("DEM", 16, 4, device=self.device, cls=self.classes["DEM"])
        x = make_data(16, 8, device=self.device)

        def exact_step(x: torch.Tensor) -> torch.Tensor:
            loss = methods.exact_autograd(model, x)
            loss.backward()
            return loss.detach()

        start = time.perf_counter()
        try:
            torch.compile(exact_step, mode=None, dynamic=False)(x)
            outcome = {"compiled": True, "message": "compiled without error"}
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            outcome = {"compiled": False, "message": f"{type(error).__name__}: {first}"}
        outcome["seconds"] = time.perf_counter() - start
        return outcome


def _training_step(model: torch.nn.Module):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step(x: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = model.sm_loss(x)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step
