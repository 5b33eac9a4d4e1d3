"""Stage 6b, plan the methods: Derivation, Conditionals -> PlannedModule.

Every method whose body comes from derived definitions is planned here into straight
lines of code: one planner serves every method whose input is the visible variable (so
shared subexpressions have one name everywhere), one the visible conditional (inputs:
the hidden units), one the joint energy; each method keeps only the steps it needs. The
methods with fixed code (the Gaussian normaliser's, the enumeration's, the estimators')
are emit's partials; they call the planned ones.
"""

from __future__ import annotations

import ast

from energydsl.compiler.domains import DOMAINS
from energydsl.compiler.ir import Conditionals, Derivation, Method, PlannedModule
from energydsl.compiler.plan.fusions import fuse
from energydsl.compiler.plan.planner import Planner
from energydsl.compiler.plan.program import BATCH, Operand, Step, uses_name
from energydsl.errors import shorten

LINE_LENGTH = 100
ANCHOR_BUFFER = "_anchor"


def anchor(checked, normalised: bool) -> str:
    """The attribute whose dtype and device the model's tensors take: its first
    parameter; without parameters, the learnt log Z of an unnormalised model, or (a
    normalised model with nothing to learn) an empty buffer kept for this alone."""
    if checked.params:
        return next(iter(checked.params))
    return ANCHOR_BUFFER if normalised else "log_z"


_SUMS = {ast.Add: "+", ast.Sub: "-"}
_PRODUCTS = {ast.Mult: "*", ast.Div: "/", ast.MatMult: "@"}


def _chain(node: ast.expr) -> tuple[dict, list[tuple[str, ast.expr]]]:
    """A left-nested chain of + and - (or of * and /): its operators and its operands,
    each with the operator before it ("" for the first)."""
    for table in (_SUMS, _PRODUCTS):
        if isinstance(node, ast.BinOp) and type(node.op) in table:
            operands: list[tuple[str, ast.expr]] = []
            while isinstance(node, ast.BinOp) and type(node.op) in table:
                operands.append((table[type(node.op)], node.right))
                node = node.left
            return table, [("", node), *reversed(operands)]
    return {}, []


def _broken(node: ast.expr, indent: int, force: bool = False) -> list[str]:
    """Lines of `node` at `indent`, broken before top-level operators (+ and - first,
    then * and /) and inside parenthesised operands, when longer than a line (or
    `force`d: the assignment it ends was)."""
    text = ast.unparse(node)
    table, operands = _chain(node)
    if (not force and indent + len(text) <= LINE_LENGTH) or not operands:
        return [text]
    lines = []
    for op, operand in operands:
        prefix = f"{op} " if op else ""
        inner_table, _ = _chain(operand)
        # needs its parentheses: a sum inside a product, or a right operand of the same
        # precedence (a - (b + c), a * (b * c): the chain is left-nested without them)
        grouped = (table is _PRODUCTS and inner_table is _SUMS) or (
            bool(op) and inner_table is table)
        single = ast.unparse(operand)
        if grouped:
            single = f"({single})"
        if indent + len(prefix) + len(single) <= LINE_LENGTH or not inner_table:
            lines.append(prefix + single)
        elif grouped or inner_table is _SUMS:
            pad = " " * 4
            lines.append(prefix + "(")
            lines += [pad + line for line in _broken(operand, indent + 4)]
            lines.append(")")
        else:
            inner = _broken(operand, indent)
            lines += [prefix + inner[0], *inner[1:]]
    return lines


def wrap_assignment(name: str, code: str, indent: int = 8) -> str:
    """`name = a + b - c`, broken before top-level + and - (then * and /, and inside
    parenthesised operands) when longer than a line; a call, an argument a line."""
    line = f"{name} = {code}"
    if indent + len(line) <= LINE_LENGTH:
        return line
    node = ast.parse(code, mode="eval").body
    pad = " " * (indent + 4)
    if isinstance(node, ast.Call) and node.args and not node.keywords:  # an argument a line
        lines = [f"{name} = {ast.unparse(node.func)}("]
        for argument in node.args:
            parts = _broken(argument, indent + 4)
            lines += [pad + part for part in parts[:-1]] + [f"{pad}{parts[-1]},"]
        return "\n".join(lines) + "\n" + " " * indent + ")"
    parts = _broken(node, indent + 4, force=True)
    if len(parts) == 1:
        return line
    return f"{name} = (\n" + "\n".join(pad + p for p in parts) + "\n" + " " * indent + ")"


def _positive_precision(diagonal: str) -> list[str]:
    """Lines refusing a diagonal precision with an entry <= 0, as _cholesky refuses a full
    one that is not positive definite (the same message)."""
    return [f"if bool(({diagonal} <= 0).any()):",
            '    raise ValueError(',
            '        "the precision is not positive definite: "',
            '        "at these parameters the model is not normalisable"',
            '    )']


def bare(code: str) -> str:
    """Python scalar code without redundant outer parentheses."""
    return ast.unparse(ast.parse(code, mode="eval"))


def enumerable(derivation: Derivation, conditionals: Conditionals) -> bool:
    """All hidden units discrete, p(v | h) Gaussian, and no closed form for F already:
    log Z by enumerating the hidden states, each integrated over v analytically."""
    checked = derivation.model.symbolic.checked
    summable = conditionals.visible is not None or conditionals.visible_probability is not None
    return (summable and conditionals.gaussian_precision is None
            and "_energy" in conditionals.definitions
            and all(DOMAINS[h.domain].discrete for h in checked.hidden.values()))


class MethodPlanner:
    def __init__(self, derivation: Derivation, conditionals: Conditionals):
        self.derivation = derivation
        self.conditionals = conditionals
        symbolic = derivation.model.symbolic
        self.checked = symbolic.checked
        self.visible = self.checked.visible.name
        self.dim = self.checked.visible.shape[0]
        definitions = {**derivation.definitions, **conditionals.definitions}
        self.planner = Planner(derivation, definitions=definitions)
        # Forward-propagated Jacobians first, layer by layer: each layer's quadratic form
        # then reads the product J_l V^T its Jacobian forms (one GEMM), where planned on
        # its own it picks a per-sample Gram of J_l (the score no longer plans them first,
        # being read off reverse-mode adjoints). Unused steps are not emitted.
        for name in derivation.jacobians:
            self.planner.define(name)
        self.hidden_planner = None
        if conditionals.visible is not None or conditionals.visible_probability is not None:
            inputs = {symbolic.hidden[name]: name for name in self.checked.hidden}
            self.hidden_planner = Planner(derivation, definitions=definitions, inputs=inputs)
        self.joint_planner = None
        if "_energy" in definitions:
            inputs = {symbolic.visible: self.visible}
            inputs.update({symbolic.hidden[name]: name for name in self.checked.hidden})
            self.joint_planner = Planner(derivation, definitions=definitions, inputs=inputs)
        self.anchor = anchor(self.checked, conditionals.gaussian_precision is not None)

    # ------------------------------------------------------------------ bodies
    def body(self, planner: Planner, outputs: list[str], prologue: list[str],
             per_sample: bool = True) -> tuple[list[str], list[str]]:
        """Lines computing `outputs` (definition names) and the code of each result,
        with a leading batch axis when `per_sample` (even for values that do not depend
        on the input, such as a Gaussian model's Laplacian)."""
        results = []
        for name in outputs:
            definition = planner.definitions[name]
            batch = per_sample or name in planner.batched
            target = ((BATCH,) if batch else ()) + tuple(definition.indices)
            operand = planner.define(name)
            results.append((operand, target))
        finished = [self.finish(planner, operand, target) for operand, target in results]
        outputs_code = [op.code for op, _ in results] + finished
        steps = planner.program.needed(outputs_code)
        diagonals = planner.diagonals({step.name for step in steps})
        if diagonals:  # sum(i: W[i, j]^2) as the diagonal of a W^T W formed anyway
            by_name = {step.name: step for step in steps}
            replaced = {name: Step(name, code, shorten(f"{by_name[name].comment}, from "
                                                       f"{code.split('(')[1][:-1]}", 88),
                                   tuple(n for n in by_name if uses_name(code, n)))
                        for name, code in diagonals.items()}
            steps = planner.program.needed(outputs_code, replaced)
        lines = []
        for step in fuse(steps):
            lines += [f"# {comment}" for comment in step.comment.split("\n")]
            lines.append(wrap_assignment(step.name, step.code))
        text = " ".join(lines + finished)
        head = [line for line in prologue if not line.startswith("_like") or
                uses_name(text, "_like")]
        head = [line.replace("_batch = ", "") if line.startswith("_batch = ")
                and not uses_name(text, "_batch") else line for line in head]
        return head + lines, finished

    def finish(self, planner: Planner, operand: Operand, target: tuple) -> str:
        """The value with exactly the axes `target` (broadcast when it lacks some)."""
        if operand.indices == target and operand.is_tensor:
            return operand.code
        shape = ", ".join(planner.shape_code(i) for i in target)
        if not operand.is_tensor:
            if not target:
                return f"_like.new_tensor({bare(operand.code)})"
            comma = "," if len(target) == 1 else ""
            return f"_like.new_full(({shape}{comma}), {bare(operand.code)})"
        code = planner.align(operand, target, broadcast=True)
        if set(operand.indices) != set(target):
            code = f"{code}.expand({shape})"
        return code

    def v_prologue(self) -> list[str]:
        v = self.visible
        return [f'_batch = self._check("{v}", {v}, self.{self.dim})', f"_like = {v}"]

    def hidden_prologue(self, first: str | None = None) -> list[str]:
        """Shape checks of the hidden arguments, batch size from `first` (default the
        first hidden variable)."""
        hidden = list(self.checked.hidden)
        lead = first or hidden[0]
        size = self.checked.hidden[lead].shape[0] if lead in self.checked.hidden else self.dim
        lines = [f'_batch = self._check("{lead}", {lead}, self.{size})']
        for h in hidden:
            if h != lead:
                size = self.checked.hidden[h].shape[0]
                lines.append(f'self._check("{h}", {h}, self.{size}, {lead}.shape[0])')
        return lines + [f"_like = {lead}"]

    # ------------------------------------------------------------------ methods
    def plan(self) -> PlannedModule:
        return PlannedModule(
            self.anchor, tuple(self.core()),
            tuple(self.energy_method() + self.hidden_methods() + self.sm_terms_method()
                  + self.visible_methods()),
            self.gaussian_precision(), tuple(self.enumeration_methods()),
            " + ".join(f"self.{h.shape[0]}" for h in self.checked.hidden.values()
                       if not DOMAINS[h.domain].exclusive) or "0",
            " * ".join(f"self.{h.shape[0]}" for h in self.checked.hidden.values()
                       if DOMAINS[h.domain].exclusive))

    def core(self) -> list[Method]:
        v, D = self.visible, self.dim
        arg = f"{v}: torch.Tensor"
        methods = []

        def simple(name: str, definition: str, doc: str, post: str = "{}") -> None:
            lines, (result,) = self.body(self.planner, [definition], self.v_prologue())
            methods.append(Method(name, arg, "torch.Tensor", doc,
                                  tuple(lines + [f"return {post.format(result)}"])))

        simple("free_energy", "free_energy", f"Free energy F({v}) per sample, shape [N].")
        if DOMAINS[self.checked.visible.domain].discrete:  # binary or spin data
            simple("flip_gain", "flip_gain",
                   f"F({v} with entry i flipped) - F({v}) for every entry i, shape [N, {D}]; "
                   f"P({v}_i | the\n        other entries) = sigmoid(flip_gain_i).")
            simple("rm_loss", "rm_objective",
                   "Ratio matching (Hyvarinen 2007), the batch mean of\n"
                   "        sum_i sigmoid(-flip_gain_i)^2.", "{}.mean()")
            simple("pl_loss", "pl_objective",
                   f"Negative log pseudo-likelihood, exact over all {D} entries: the batch "
                   "mean of\n        -sum_i log P(" + v + "_i | the others) = "
                   "sum_i softplus(-flip_gain_i).", "{}.mean()")
            return methods
        simple("score", "score",
               f"Score d log p~({v}) / d{v} = -dF/d{v} per sample, shape [N, {D}].")
        simple("laplacian", "laplacian",
               f"Laplacian sum_i d^2 log p~({v}) / d{v}_i^2 per sample, shape [N].")
        simple("sm_loss", "sm_objective",
               "Exact score-matching loss (Hyvarinen 2005), the batch mean of\n"
               f"        sum_i 1/2 score_i^2 + d score_i / d{v}_i, constants included.",
               "{}.mean()")
        return methods

    def energy_method(self) -> list[Method]:
        """E(v, h, ...) per sample: the joint energy the spec wrote."""
        if self.joint_planner is None:
            return []
        v = self.visible
        hidden = list(self.checked.hidden)
        args = ", ".join(f"{name}: torch.Tensor" for name in [v, *hidden])
        lines, (value,) = self.body(self.joint_planner, ["_energy"],
                                    self.hidden_prologue(first=v))
        return [Method("energy", args, "torch.Tensor",
                       f"The joint energy E({', '.join([v, *hidden])}) per sample, shape [N].",
                       tuple(lines + [f"return {value}"]))]

    def hidden_methods(self) -> list[Method]:
        v = self.visible
        methods = []
        for name, conditional in self.conditionals.hidden.items():
            unit = conditional.unit
            size = self.checked.hidden[name].shape[0]
            lines, (mean,) = self.body(self.planner, [f"_mean_{name}"], self.v_prologue())
            methods.append(Method(
                f"mean_{name}", f"{v}: torch.Tensor", "torch.Tensor",
                f"E[{name} | {v}], shape [N, {size}] ({unit.domain} units).",
                tuple(lines + [f"return {mean}"])))
            keys = list(conditional.sampler)
            lines, values = self.body(self.planner, [f"_{k}_{name}" for k in keys],
                                      self.v_prologue())
            params = dict(zip(keys, values, strict=True))
            lines += DOMAINS[unit.domain].draw(params)
            note = (f"jointly Gaussian given {v}." if "precision" in unit.coefficients
                    else DOMAINS[unit.domain].joint_note.format(v=v))
            head = f"A draw of {name} ~ p({name} | {v}), shape [N, {size}];"
            # the docstring's first line starts at column 12 and ends with its quotes
            fits = 11 + len(head) + 1 + len(note) + 3 <= LINE_LENGTH
            methods.append(Method(
                f"sample_{name}", f"{v}: torch.Tensor, generator: torch.Generator | None = None",
                "torch.Tensor", head + (" " if fits else "\n        ") + note, tuple(lines)))
        return methods

    def sm_terms_method(self) -> list[Method]:
        terms = self.conditionals.sm_terms
        if terms is None:
            return []
        names = list(terms)
        lines, values = self.body(self.planner, [f"_{k}" for k in names], self.v_prologue())
        entries = "".join(f'\n            "{k}": {value}.mean(),'
                          for k, value in zip(names, values, strict=True))
        v = self.visible
        return [Method(
            "sm_terms", f"{v}: torch.Tensor", "dict[str, torch.Tensor]",
            "The three terms of the latent-EBM score-matching theorem (Swersky et al. 2011),\n"
            "        batch means summing to sm_loss: squared_error = 1/2 |E[dE/dv | v]|^2,\n"
            "        variance = sum_i var[dE/dv_i | v], curvature = -sum_i E[d^2E/dv_i^2 | v].",
            tuple(lines + ["return {" + entries + "\n        }"]))]

    def discrete_visible_methods(self) -> list[Method]:
        """mean_v and sample_v of binary or spin data: independent entries given the
        hidden units, each high with probability sigmoid(-(high - low) dE/dv_i)."""
        planner = self.hidden_planner
        if self.conditionals.visible_probability is None or planner is None:
            return []
        v = self.visible
        hidden = list(self.checked.hidden)
        args = ", ".join(f"{h}: torch.Tensor" for h in hidden)
        domain = DOMAINS[self.checked.visible.domain]
        low, high = domain.low_high
        lines, (probability,) = self.body(planner, ["_visible_probability"],
                                          self.hidden_prologue())
        mean = probability if (low, high) == (0, 1) else f"{high - low} * {probability} + {low}"
        shape = f"[N, {self.dim}]"
        given = ", ".join(hidden)
        return [
            Method(f"mean_{v}", args, "torch.Tensor",
                   f"E[{v} | {given}], shape {shape}: the entries of {v} are independent "
                   f"{domain.name}\n        units given the hidden ones.",
                   tuple(lines + [f"return {mean}"])),
            Method(f"sample_{v}", args + ", generator: torch.Generator | None = None",
                   "torch.Tensor", f"A draw of {v} ~ p({v} | {given}), shape {shape}.",
                   tuple(lines + domain.draw({"probability": probability}))),
        ]

    def visible_methods(self) -> list[Method]:
        conditional, planner = self.conditionals.visible, self.hidden_planner
        if conditional is None or planner is None:
            return self.discrete_visible_methods()
        v = self.visible
        hidden = list(self.checked.hidden)
        args = ", ".join(f"{h}: torch.Tensor" for h in hidden)
        scale = conditional.isotropic
        iso = scale is not None
        constant = scale is not None and bool(scale.is_number)
        diagonal = not iso and conditional.diagonal is not None
        outputs = ["_visible_linear"] + ([] if constant else
                                         ["_visible_scale"] if iso else
                                         ["_visible_diagonal"] if diagonal else
                                         ["_visible_precision"])
        lines, values = self.body(planner, outputs, self.hidden_prologue())
        linear = values[0]
        shape = f"[N, {self.dim}]"
        noise = ("noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, "
                 "device=mean.device)")
        if constant:  # p(v | h) = N(b / c, I / c) with a number c
            c = float(scale)  # type: ignore[arg-type]  # a number: `constant`
            mean = linear if c == 1 else f"{linear} / {c!r}"
            mean_lines = lines + [f"return {mean}"]
            sample_lines = lines + [f"mean = {mean}", noise,
                                    "return mean + noise" if c == 1
                                    else f"return mean + noise * {c ** -0.5!r}"]
            how = "isotropic" if c != 1 else "with identity covariance"
        elif iso:
            second = f"{values[1]}[:, None]"  # the scale per sample, [N]
            mean_lines = lines + [f"return {linear} / {second}"]
            sample_lines = lines + [f"mean = {linear} / {second}", noise,
                                    f"return mean + noise * torch.rsqrt({second})"]
            how = "isotropic: precision c I"
        elif diagonal:  # independent entries, precision d[i] each
            second = values[1]
            lines += _positive_precision(second)
            mean_lines = lines + [f"return {linear} / {second}"]
            sample_lines = lines + [f"mean = {linear} / {second}", noise,
                                    f"return mean + noise * torch.rsqrt({second})"]
            how = "a diagonal precision: independent entries"
        else:
            second = values[1]
            mean_lines = lines + [f"factor = self._cholesky({second})",
                                  f"return torch.cholesky_solve({linear}[..., None], "
                                  "factor)[..., 0]"]
            sample_lines = lines + [
                f"factor = self._cholesky({second})",
                f"mean = torch.cholesky_solve({linear}[..., None], factor)[..., 0]",
                noise,
                "offset = torch.linalg.solve_triangular(factor.mT, noise[..., None], "
                "upper=True)",
                "return mean + offset[..., 0]"]
            how = "a full precision per sample, by batched Cholesky"
        return [
            Method(f"mean_{v}", args, "torch.Tensor",
                   f"E[{v} | {', '.join(hidden)}], shape {shape}: {v} given the hidden units is\n"
                   f"        Gaussian ({how}).", tuple(mean_lines)),
            Method(f"sample_{v}", args + ", generator: torch.Generator | None = None",
                   "torch.Tensor",
                   f"A draw of {v} ~ p({v} | {', '.join(hidden)}), shape {shape}.",
                   tuple(sample_lines)),
        ]

    def gaussian_precision(self) -> Method | None:
        """d^2 F / dv^2 of a model whose F is quadratic in v (the normaliser's partial
        uses it)."""
        if self.conditionals.gaussian_precision is None:
            return None
        v = self.visible
        lines, (precision,) = self.body(self.planner, ["_gaussian_precision"],
                                        [f"_like = self.{self.anchor}"], per_sample=False)
        return Method("_gaussian_precision", "", "torch.Tensor",
                      f"d^2 F / d{v}^2, constant because F is quadratic in {v}: the "
                      "precision.", tuple(lines + [f"return {precision}"]))

    def enumeration_methods(self) -> list[Method]:
        """The hidden states of a code, and the weight of each state (v integrated out):
        the planned parts of the enumerated normaliser (its partial does the rest)."""
        if not enumerable(self.derivation, self.conditionals):
            return []
        v, D = self.visible, self.dim
        hidden = list(self.checked.hidden)
        dtype = f"self.{self.anchor}.dtype"
        states_lines = []
        exclusive = [h for h in hidden if DOMAINS[self.checked.hidden[h].domain].exclusive]
        binary = [h for h in hidden if h not in exclusive]
        for k, name in enumerate(exclusive):  # the code's lowest digits in base K: categories
            size = f"self.{self.checked.hidden[name].shape[0]}"
            states_lines.append(f"{name} = torch.nn.functional.one_hot(codes % {size}, "
                                f"{size}).to({dtype})")
            if binary or k < len(exclusive) - 1:
                states_lines.append(f"codes = codes // {size}")
        sizes = [self.checked.hidden[h].shape[0] for h in binary]
        total = " + ".join(f"self.{s}" for s in sizes)
        if binary:  # the rest in base 2: one bit per unit
            states_lines += ["bits = torch.arange(" + total + ", device=codes.device)",
                             f"flags = ((codes[:, None] >> bits) & 1).to({dtype})"]
        start = "0"
        for name, size in zip(binary, sizes, strict=True):
            stop = f"self.{size}" if start == "0" else f"{start} + self.{size}"
            value = DOMAINS[self.checked.hidden[name].domain].enumerated(
                f"flags[:, {start}:{stop}]")
            states_lines.append(f"{name} = {value}")
            start = stop
        states_lines.append(f"return {', '.join(hidden)}" + ("," if len(hidden) == 1 else ""))

        args = ", ".join(f"{h}: torch.Tensor" for h in hidden)
        call = ", ".join(hidden)
        states = Method("_hidden_states", "codes: torch.Tensor", "tuple[torch.Tensor, ...]",
                        "The hidden states whose bits are `codes` ([S] integers), one tensor "
                        "per\n        hidden variable.", tuple(states_lines))
        if self.conditionals.visible_probability is not None:
            return [states, self.discrete_visible_weight(args, call)]
        conditional, planner = self.conditionals.visible, self.hidden_planner
        assert conditional is not None and planner is not None  # enumerable
        scale = conditional.isotropic
        iso = scale is not None
        if scale is not None and scale.is_number:  # P = c I with a number c
            c = float(scale)
            lines: list[str] = []
            log_det = "" if c == 1 else f" - 0.5 * self.{D} * math.log({c!r})"
        else:
            diagonal = not iso and conditional.diagonal is not None
            output = "_visible_scale" if iso else "_visible_diagonal" if diagonal \
                else "_visible_precision"
            lines, (second,) = self.body(planner, [output], self.hidden_prologue())
            if iso:
                lines.append(f"log_det = self.{D} * torch.log({second})")
            elif diagonal:
                lines += _positive_precision(second)
                lines.append(f"log_det = torch.log({second}).sum(dim=-1)")
            else:
                lines += [f"factor = self._cholesky({second})",
                          "log_det = 2 * torch.log(torch.diagonal(factor, dim1=-2, dim2=-1))"
                          ".sum(dim=-1)"]
            log_det = " - 0.5 * log_det"
        weight_lines = lines + [
            f"mean = self.mean_{v}({call})",
            f"return -self.energy(mean, {call}) + 0.5 * self.{D} * math.log(2 * math.pi)"
            + log_det]
        return [
            states,
            Method("_log_hidden_weight", args, "torch.Tensor",
                   f"log of the integral of exp(-E({v}, h)) d{v} per hidden state, shape [S]: "
                   f"{v} | h is Gaussian,\n        so it is -E(m, h) + D/2 log(2 pi) - "
                   "1/2 log det P(h) at the conditional mean m.",
                   tuple(weight_lines)),
        ]

    def discrete_visible_weight(self, args: str, call: str) -> Method:
        """log sum over v of exp(-E(v, h)) per hidden state, for binary or spin data:
        E(v, h) = E(low, h) + sum_i (v_i - low) slope_i(h), so each entry sums to
        softplus(-(high - low) slope_i) on its own."""
        planner = self.hidden_planner
        assert planner is not None  # a visible conditional exists
        v = self.visible
        low, high = DOMAINS[self.checked.visible.domain].low_high
        lines, (slope,) = self.body(planner, ["_visible_slope"], self.hidden_prologue())
        scale = "" if high - low == 1 else f"{high - low} * "
        first = call.split(",")[0]
        lines += [f"lowest = {first}.new_full(({first}.shape[0], self.{self.dim}), {low}.0)",
                  f"return -self.energy(lowest, {call}) + "
                  f"torch.nn.functional.softplus(-{scale}{slope}).sum(dim=1)"]
        return Method("_log_hidden_weight", args, "torch.Tensor",
                      f"log of the sum over {v} of exp(-E({v}, h)) per hidden state, shape "
                      f"[S]: the entries of\n        {v} given h are independent, each summed "
                      "on its own.", tuple(lines))


def plan_methods(derivation: Derivation, conditionals: Conditionals) -> PlannedModule:
    """Plan every method whose body comes from the derived definitions."""
    return MethodPlanner(derivation, conditionals).plan()
