"""Turn bench/run.py's results into RESULTS.md, time_vs_D.png and results.json, and judge
the performance targets."""

from __future__ import annotations

import json
from pathlib import Path

from sections import (
    D_MAIN,
    FUNC,
    GENERATED,
    HAND_BEST,
    LOOP,
    SLICED,
    SLICED_MODEL,
)

MB = 2.0**20


def _ms(entry: dict | None) -> float | None:
    return None if entry is None else entry.get("ms")


def _at_least_ms(entry: dict | None) -> float | None:
    """The time, or the lower bound of a loss stopped at its time limit."""
    return None if entry is None else entry.get("ms", None) or entry.get("lower_ms")


def _speedup(loop: dict | None, gen: float | None) -> str:
    """loop / gen as text; '>' when the loop was stopped at its time limit."""
    bound = loop is not None and loop.get("ms") is None and loop.get("lower_ms") is not None
    return (">" if bound else "") + _f(_ratio(_at_least_ms(loop), gen), 1, "x")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _f(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}{suffix}"
    return f"{value:.{digits}f}{suffix}"


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "n/a"
    if entry.get("ms") is None:
        return f"*{entry.get('note', 'n/a')}*"
    return _f(entry["ms"])


def fastest_hand(table: dict) -> tuple[str, float | None]:
    """The fastest hand-written form of a main-table row: (its name, ms)."""
    forms = {method: _ms(entry) for method, entry in table.items()
             if method not in (GENERATED, SLICED, SLICED_MODEL, LOOP, FUNC)
             and _ms(entry) is not None}
    if not forms:
        return HAND_BEST, None
    form = min(forms, key=lambda m: forms[m])
    return form, forms[form]


def gemm_fraction(results: dict) -> float | None:
    """The generated DEM's rate in the best (fewest-FLOP) form's FLOPs, as a fraction of
    the machine's SGEMM rate (the DEM timed with the SGEMM; else the main table's)."""
    gemm = results.get("gemm")
    if not gemm:
        return None
    gen = _gemm_generated_ms(results)
    if gen is None:
        return None
    return min(gemm["flops"].values()) / (gen / 1e3) / (gemm["gflops"] * 1e9)


def _gemm_generated_ms(results: dict) -> float | None:
    """The generated DEM's ms for the SGEMM comparison: timed interleaved with the SGEMM
    when the run did (same load for both), else the main table's."""
    timed = results.get("gemm", {}).get("generated_ms")
    if timed is not None:
        return timed
    return _ms(results.get("main", {}).get("DEM", {}).get(GENERATED))


def evaluate_targets(results: dict) -> None:
    """The project's targets, each a row {target, value, verdict}; also a text summary."""
    rows = []
    main = results.get("main", {})

    def add(target: str, value: float | None, ok: bool | None, shown: str) -> None:
        verdict = "n/a" if ok is None else ("PASS" if ok else "FAIL")
        rows.append({"target": target, "value": value, "shown": shown, "verdict": verdict})

    def speedup_row(target: str, table: dict, goal: float) -> None:
        """exact loop / generated; a stopped loop gives a lower bound (PASS only if enough)."""
        loop, gen = table.get(LOOP), _ms(table.get(GENERATED))
        value = _ratio(_at_least_ms(loop), gen)
        bound = loop is not None and loop.get("ms") is None and value is not None
        ok = None if value is None else (value >= goal if not bound or value >= goal else None)
        add(target, value, ok, (">" if bound else "") + _f(value, 1, "x"))

    for name, table in main.items():
        speedup_row(f"{name}: exact autograd / generated >= 100", table, 100)
    for name, table in main.items():
        form, best = fastest_hand(table)
        ratio = _ratio(_ms(table.get(GENERATED)), best)
        add(f"{name}: generated / fastest hand form ({form}) <= 1.15", ratio,
            None if ratio is None else ratio <= 1.15, _f(ratio, 2, "x"))
    dem = main.get("DEM", {})
    ratio = _ratio(_ms(dem.get(GENERATED)), _ms(dem.get(SLICED)))
    add("DEM: generated / sliced SM, 1 projection (autograd score) <= 1.5", ratio,
        None if ratio is None else ratio <= 1.5, _f(ratio, 2, "x"))
    fraction = gemm_fraction(results)
    add("DEM: >= 40% of this machine's SGEMM rate (best form's FLOPs / generated time)",
        fraction, None if fraction is None else fraction >= 0.4,
        _f(None if fraction is None else 100 * fraction, 0, "%"))
    for name, table in results.get("memory", {}).items():
        ratio = _ratio(table.get(GENERATED), table.get(HAND_BEST))
        add(f"{name}: peak memory generated / hand <= 1.3", ratio,
            None if ratio is None else ratio <= 1.3, _f(ratio, 2, "x"))
    compile_times = results.get("spec_compile", {})
    for spec, entry in compile_times.get("warm", {}).items():
        seconds = entry.get("s")
        add(f"compile specs/{spec}.edsl, warm < 2 s", seconds,
            None if seconds is None else seconds < 2, _f(seconds, 2, " s"))
    cold = compile_times.get("cold", {}).get("s")
    count = max(len(compile_times.get("warm", {})), 1)
    add(f"compile all {count} specs, cold process < {count} s", cold,
        None if cold is None else cold < count, _f(cold, 2, " s"))
    startup = results.get("startup", {})
    seconds = startup.get("compile_s")
    add("start-up: energydsl compile specs/dem.edsl, cold < 1.5 s", seconds,
        None if seconds is None else seconds < 1.5, _f(seconds, 2, " s"))
    seconds = startup.get("first_step_s")
    add("start-up: energydsl train to its first step < 3 s", seconds,
        None if seconds is None else seconds < 3, _f(seconds, 2, " s"))
    results["targets"] = rows
    failed = [r for r in rows if r["verdict"] == "FAIL"]
    results["summary"] = [f"{r['verdict']}  {r['target']}: {r['shown']}" for r in rows] + [
        f"{len(rows) - len(failed)} of {len(rows)} targets pass"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _markdown(results: dict, plot_name: str) -> str:
    meta = results["meta"]
    n = meta["batch"]
    busy = meta.get("others_busy")
    busy_text = "n/a" if busy is None else f"{100 * busy:.0f}%"
    out = [
        "# energydsl benchmark results",
        "",
        f"Written by `bench/run.py` on {meta['date']} in {meta.get('elapsed_s', 0):.0f} s. "
        f"Reproduce with `{meta['command']}` (`make bench` runs the default).",
        "",
        f"- machine: {meta['machine']}",
        f"- Python {meta['python']}, torch {meta['torch']}, {meta['threads']} thread(s), "
        f"device {meta['device']}, {meta['dtype']}",
        f"- the machine is shared: other processes used {busy_text} of its CPU time during "
        f"the run. Every time is the best of {meta['repeats']} runs after warm-up (slow "
        "methods: fewer, within a time budget); the fast methods of one table row are timed "
        "interleaved, round by round (each block of calls after one untimed call, so no "
        "method is timed in the caches another left), so their ratios are more reliable "
        "than absolute times; "
        f"the D={D_MAIN} table's fast methods get a second such pass at the end of it",
        "- a time is one loss evaluation plus the backward pass to the parameter gradients, "
        "in milliseconds",
        "- allocator: " + ("glibc's mmap and trim thresholds raised, as energydsl's commands "
                           "do (`energydsl.keep_freed_memory()`, docs/performance.md), for "
                           "every method alike" if meta.get("kept_freed_memory") else
                           "the C library's defaults"),
        *([f"- **warning**: with {meta['threads']} threads on {meta['machine'].split(', ')[1]} "
           "that other processes keep busy, each parallel op waits for its slowest, "
           "descheduled thread (measured here: 2-4x slower than 1 thread, exact loops up to "
           "50x): absolute times are inflated; `--threads 1` is steadier on a busy machine"]
          if busy is not None and busy > 0.2 and meta["threads"] > 1 else []),
        "",
        "## Targets",
        "",
    ]
    out += _table(["target", "value", "verdict"],
                  [[r["target"], r["shown"], f"**{r['verdict']}**"] for r in results["targets"]])
    out += ["", "The sliced-SM target compares against sliced SM computed from the free energy "
            "alone (score by autograd, then one Hessian-vector product), the baseline a user "
            "without derivations has; the version that starts from the generated score is "
            "in the ratio table too.", ""]

    main = results.get("main", {})
    out += [f"## Models at D={D_MAIN}, K=H=M=64, batch {n}", "",
            "The five seed models, and deep energy models with three and five sigmoid "
            "layers of 64 units (specs/dem3.edsl, specs/dem5.edsl).", "",
            "Time per loss + backward, ms:", ""]
    columns = [GENERATED, HAND_BEST, SLICED, SLICED_MODEL, LOOP, FUNC]
    out += _table(["model", *columns],
                  [[name, *(_cell(table.get(c)) for c in columns)] for name, table in main.items()])
    out += ["", "Ratios (higher first column = generated faster than autograd; other columns "
            "< 1 = generated faster):", ""]
    rows = []
    for name, table in main.items():
        gen = _ms(table.get(GENERATED))
        rows.append([name, _speedup(table.get(LOOP), gen),
                     _f(_ratio(_ms(table.get(FUNC)), gen), 1, "x"),
                     _f(_ratio(gen, _ms(table.get(HAND_BEST))), 2, "x"),
                     _f(_ratio(gen, _ms(table.get(SLICED))), 2, "x"),
                     _f(_ratio(gen, _ms(table.get(SLICED_MODEL))), 2, "x")])
    out += _table(["model", "autograd loop / generated", "torch.func / generated",
                   "generated / hand", "generated / sliced (autograd score)",
                   "generated / sliced (model score)"], rows)
    variants = [(name, method, entry) for name, table in main.items()
                for method, entry in table.items()
                if method not in (*columns,)]
    if variants:
        out += ["", "Other hand-written forms (bench/hand.py):", ""]
        out += _table(["model", "form", "ms", "/ best hand", "/ generated"],
                      [[name, method, _cell(entry),
                        _f(_ratio(_ms(entry), _ms(main[name].get(HAND_BEST))), 2, "x"),
                        _f(_ratio(_ms(entry), _ms(main[name].get(GENERATED))), 2, "x")]
                       for name, method, entry in variants])

    memory = results.get("memory", {})
    if memory:
        how = ("torch.cuda.max_memory_allocated above the memory live before the call"
               if results.get("memory_method") == "torch.cuda.max_memory_allocated" else
               "torch.profiler(profile_memory=True): the running sum of the CPU allocator's "
               "allocation and free events, in time order, at its maximum; tensors live "
               "before the call (parameters, data) are not counted, the gradients are")
        out += ["", f"Peak memory of one loss + backward, MB ({how}):", ""]
        methods_seen = list(dict.fromkeys(m for table in memory.values() for m in table))
        rows = []
        for name, table in memory.items():
            rows.append([name, *(_f(None if table.get(m) is None else table[m] / MB, 2)
                                 if m in table else "" for m in methods_seen),
                         _f(_ratio(table.get(GENERATED), table.get(HAND_BEST)), 2, "x")])
        out += _table(["model", *methods_seen, "generated / hand"], rows)

    counts = results.get("operations", {})
    if counts:
        out += ["", "Operations per loss + backward (torch operators dispatched, views "
                "included; each costs ~5-20 us of overhead on these small tensors):", ""]
        out += _table(["model", "generated", "hand", "generated / hand"],
                      [[name, str(c.get(GENERATED)), str(c.get(HAND_BEST)),
                        _f(_ratio(c.get(GENERATED), c.get(HAND_BEST)), 2, "x")]
                       for name, c in counts.items()])

    gemm = results.get("gemm")
    if gemm:
        fraction = gemm_fraction(results)
        best = min(gemm["flops"].values())
        out += ["", f"DEM against this machine's matrix-multiply rate: a {gemm['side']}^3 "
                f"float32 GEMM runs at {gemm['gflops']:.1f} GFLOP/s with "
                f"{meta['threads']} thread(s), timed interleaved with the generated DEM step "
                "(so both see the same load). FLOPs of one loss + backward "
                "(torch.utils.flop_counter, matrix products only), and the rate each form "
                "would reach at the generated time:", ""]
        gen = _gemm_generated_ms(results)
        out += _table(["form", "MFLOP", "GFLOP/s at the generated time"],
                      [[m, f"{f / 1e6:.0f}", _f(None if gen is None else f / gen / 1e6, 1)]
                       for m, f in gemm["flops"].items()])
        out += ["", f"The best form's {best / 1e6:.0f} MFLOP in the generated "
                f"{_f(gen)} ms is {_f(None if fraction is None else 100 * fraction, 0, '%')} "
                "of the SGEMM rate."]

    checks = results.get("check", [])
    if checks:
        out += ["", "## The exact forms agree", "",
                "Against the generated sm_loss in float64 (D=64, K=8, batch 16, masked "
                "Gaussian 8x8; random parameters): largest relative error of the loss and of "
                "any parameter gradient.", ""]
        out += _table(["model", "method", "loss", "gradients"],
                      [[r["model"], r["method"], f"{r['loss']:.1e}", f"{r['grad']:.1e}"]
                       for r in checks])

    sweep = results.get("sweep_d", [])
    if sweep:
        out += ["", f"## Time against D (batch {n}, K=H=M=64)", "",
                f"![time against D]({plot_name})", ""]
        out += _sweep_table(sweep, "D", (GENERATED, HAND_BEST, SLICED, LOOP, FUNC))
    sweep = results.get("sweep_n", [])
    if sweep:
        out += ["", f"## Time against batch size (D={D_MAIN})", ""]
        out += _sweep_table(sweep, "N", (GENERATED, HAND_BEST, SLICED))

    compile_times = results.get("spec_compile")
    if compile_times:
        cold = compile_times["cold"]
        out += ["", "## Compile times", "",
                "Warm: `energydsl.compiler.driver.compile_source` in this process after one "
                "warm-up compile, SymPy's cache cleared before each of "
                f"{compile_times['warm_runs']} runs, best kept. Cold: `" + cold["command"]
                + "` in a fresh process "
                f"(Python start-up and imports included), best of {cold.get('runs', 0)}.", ""]
        rows = [[f"specs/{spec}.edsl (warm)", _f(e.get("s"), 2, " s") if e.get("s") is not None
                 else f"*{e.get('note')}*"] for spec, e in compile_times["warm"].items()]
        rows.append(["all specs, cold process", _f(cold.get("s"), 2, " s")
                     if cold.get("s") is not None else f"*{cold.get('note')}*"])
        out += _table(["compile", "time"], rows)
        if cold.get("in_sync") is not None:
            out += ["", "generated/ equals a fresh compile of specs/: "
                    + ("yes" if cold["in_sync"] else f"no ({', '.join(cold['stale'])} differ)")]

    tc = results.get("torch_compile")
    if tc is not None:
        out += ["", "## torch.compile", "",
                f"A training step (sm_loss, backward, SGD step) of each generated module at "
                f"D={D_MAIN}, batch {n}, compiled with `torch.compile(mode=None, "
                "dynamic=False)`, against the same step in eager mode from identical "
                "parameters (3 steps; largest relative difference of the losses and of the "
                "parameters after them). Compile time is the first call.", ""]
        rows = []
        for name, e in tc.items():
            if "note" in e:
                rows.append([name, f"*{e['note']}*", "", "", "", "", ""])
                continue
            rows.append([name, _f(e["compile_s"], 1, " s"), _f(e["eager_ms"]),
                         _f(e["compiled_ms"]), _f(e["speedup"], 2, "x"),
                         f"{e['loss_diff']:.1e} / {e['param_diff']:.1e}",
                         "yes" if e["same"] else "**no**"])
        out += _table(["model", "compile", "eager ms", "compiled ms", "speed-up",
                       "diff loss / params", "same values"], rows)
        exact = results.get("exact_compile")
        if exact:
            verdict = ("could not be compiled" if not exact["compiled"] else
                       "compiled (unexpected)")
            out += ["", f"Exact SM by autograd (score by `autograd.grad(create_graph=True)`, "
                    f"one backward per dimension, then `.backward()`; DEM at D=16) {verdict}: "
                    f"`{exact['message']}`"]

    out += ["", "## Methods", "",
            "- **generated**: `model.sm_loss(x)` from generated/*.py.",
            "- **hand**: the best closed form written by hand (bench/hand.py), from the "
            "module's own parameters: Gram-matrix forms of the squared score, the DEM's "
            "quadratic term over the pairs h <= h' (half the GEMM), the deep DEMs' "
            "Jacobians carried forward layer by layer in the first layer's space "
            "(C_l = d u_l / d u_1, [N, H, H], closed with G = V_1 V_1^T), a 3x3 stencil "
            "for the masked Gaussian. The targets compare against the fastest hand form "
            "measured.",
            "- **exact, autograd loop**: score = -dF/dx by `autograd.grad(create_graph=True)`, "
            "then one more `autograd.grad` per input dimension for d score_i / dx_i.",
            "- **exact, torch.func**: the Hessian diagonal as D Hessian-vector products "
            "(`jvp` of the `grad` score, forward-over-reverse) vmapped over the basis vectors "
            "in chunks; vmapping `jacrev`/`jacfwd` over the batch forms N x D x D Jacobians "
            "(~20 GB at D=784). Skipped where its estimated time exceeds the cap.",
            "- **sliced**: sliced score matching (Song et al. 2019), one Gaussian projection "
            "per sample, variance-reduced form v^T (ds/dx) v + 1/2 |s|^2 by one "
            "Hessian-vector product; *autograd score* starts from the free energy, "
            "*model score* from the generated `score`. Approximate (unbiased) SM.",
            ""]
    return "\n".join(out)


def _sweep_table(rows: list[dict], key: str, methods: tuple[str, ...]) -> list[str]:
    grid: dict = {}
    for row in rows:
        grid.setdefault((row["model"], row[key]), {})[row["method"]] = row
    body = []
    for (name, size), entries in grid.items():
        gen = _ms(entries.get(GENERATED))
        ratios = [_f(_ratio(gen, _ms(entries.get(HAND_BEST))), 2, "x"),
                  _f(_ratio(gen, _ms(entries.get(SLICED))), 2, "x")]
        if LOOP in methods:
            ratios.append(_speedup(entries.get(LOOP), gen))
        body.append([name, str(size), *(_cell(entries.get(m)) for m in methods), *ratios])
    header = ["model", key, *methods, "gen / hand", "gen / sliced"]
    if LOOP in methods:
        header.append("loop / gen")
    return _table(header, body)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results.get("sweep_d", [])
    names = list(dict.fromkeys(r["model"] for r in rows))
    figure, axes = plt.subplots(2, 3, figsize=(13, 8), constrained_layout=True)
    styles = {GENERATED: "o-", HAND_BEST: "s--", SLICED: "^-.", LOOP: "x:", FUNC: "+:"}
    for axis, name in zip(axes.flat, names, strict=False):
        for method, style in styles.items():
            points = [(r["D"], r["ms"]) for r in rows
                      if r["model"] == name and r["method"] == method and r.get("ms")]
            if points:
                axis.loglog(*zip(*points, strict=True), style, label=method)
        axis.set_title(name)
        axis.set_xlabel("D")
        axis.set_ylabel("ms per loss + backward")
        axis.grid(True, which="both", alpha=0.3)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    if names:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        list(axes.flat)[-1].legend(handles, labels, loc="center")
    meta = results["meta"]
    figure.suptitle(f"Exact score-matching loss + backward, batch {meta['batch']}, "
                    f"{meta['dtype']}, {meta['threads']} thread(s), {meta['device']}")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(results: dict, out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = out.with_name("time_vs_D.png")
    data = out.with_name("results.json")
    if results.get("sweep_d"):
        _plot(results, plot)
    out.write_text(_markdown(results, plot.name))
    data.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return [out, plot, data]
