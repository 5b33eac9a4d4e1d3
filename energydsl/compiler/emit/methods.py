"""The methods of a generated module, each a straight-line body planned from the
derived definitions (free energy, score, ..., conditionals, Gaussian normaliser).

One planner serves every method whose input is the visible variable (so shared
subexpressions have one name everywhere) and one the visible conditional, whose inputs
are the hidden units; each method keeps only the steps it needs.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from energydsl.compiler.domains import DOMAINS
from energydsl.compiler.ir import Conditionals, Derivation
from energydsl.compiler.plan import BATCH, Operand, Planner, uses_name

LINE_LENGTH = 100
# The argument checks of a generated module (each takes the calling method's name first).
_CHECK_CALL = re.compile(r"self\.(_check|_check_stack|_positive|_generator)\(")


@dataclass(frozen=True)
class Method:
    name: str
    params: str  # the signature after `self, `
    returns: str
    doc: str
    body: tuple[str, ...]  # lines at method indentation; wrapped lines carry their own
    positive: tuple[str, ...] = ()  # arguments that must be positive finite numbers
    counts: tuple[str, ...] = ()  # arguments that must be positive integers

    def rendered(self) -> tuple[str, ...]:
        """The body as written into the module: the numeric and generator arguments
        checked first, and every check naming this method (`self._check(name, ...)` ->
        `self._check("method", name, ...)`), so a bad argument's error says which call
        it came from."""
        checks = [f'self._positive("{name}", {name}, integer=True)' for name in self.counts]
        checks += [f'self._positive("{name}", {name})' for name in self.positive]
        if "generator: torch.Generator" in self.params:
            checks.append("self._generator(generator)")
        return tuple(_CHECK_CALL.sub(rf'self.\1("{self.name}", ', line)
                     for line in [*checks, *self.body])


def wrap_assignment(name: str, code: str, indent: int = 8) -> str:
    """`name = a + b - c`, broken before top-level + and - when longer than a line."""
    line = f"{name} = {code}"
    if indent + len(line) <= LINE_LENGTH:
        return line
    node = ast.parse(code, mode="eval").body
    terms: list[tuple[str, ast.expr]] = []
    while isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        terms.append(("+" if isinstance(node.op, ast.Add) else "-", node.right))
        node = node.left
    if not terms:
        return line
    pad = " " * (indent + 4)
    parts = [ast.unparse(node)] + [f"{op} {ast.unparse(term)}" for op, term in reversed(terms)]
    return f"{name} = (\n" + "\n".join(pad + p for p in parts) + "\n" + " " * indent + ")"


ANCHOR_BUFFER = "_anchor"


def anchor(checked, normalised: bool) -> str:
    """The attribute whose dtype and device the model's tensors take: its first
    parameter; without parameters, the learnt log Z of an unnormalised model, or (a
    normalised model with nothing to learn) an empty buffer kept for this alone."""
    if checked.params:
        return next(iter(checked.params))
    return ANCHOR_BUFFER if normalised else "log_z"


class MethodBuilder:
    def __init__(self, derivation: Derivation, conditionals: Conditionals):
        self.derivation = derivation
        self.conditionals = conditionals
        symbolic = derivation.model.symbolic
        self.checked = symbolic.checked
        self.visible = self.checked.visible.name
        self.dim = self.checked.visible.shape[0]
        definitions = {**derivation.definitions, **conditionals.definitions}
        self.planner = Planner(derivation, definitions=definitions)
        self.hidden_planner = None
        if conditionals.visible is not None:
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
        steps = planner.program.needed([op.code for op, _ in results] + finished)
        lines = []
        for step in steps:
            lines.append(f"# {step.comment}")
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
                return f"_like.new_tensor({_bare(operand.code)})"
            comma = "," if len(target) == 1 else ""
            return f"_like.new_full(({shape}{comma}), {_bare(operand.code)})"
        code = planner.align(operand, target, broadcast=True)
        if set(operand.indices) != set(target):
            code = f"{code}.expand({shape})"
        return code

    def v_prologue(self) -> list[str]:
        v = self.visible
        return [f'_batch = self._check("{v}", {v}, self.{self.dim})', f"_like = {v}"]

    def param_prologue(self) -> list[str]:
        return [f"_like = self.{self.anchor}"]

    # ------------------------------------------------------------------ methods
    def build(self) -> list[Method]:
        v, D = self.visible, self.dim
        arg = f"{v}: torch.Tensor"
        methods = []

        def simple(name: str, definition: str, doc: str, post: str = "{}") -> None:
            lines, (result,) = self.body(self.planner, [definition], self.v_prologue())
            methods.append(Method(name, arg, "torch.Tensor", doc,
                                  tuple(lines + [f"return {post.format(result)}"])))

        simple("free_energy", "free_energy", f"Free energy F({v}) per sample, shape [N].")
        simple("score", "score",
               f"Score d log p~({v}) / d{v} = -dF/d{v} per sample, shape [N, {D}].")
        simple("laplacian", "laplacian",
               f"Laplacian sum_i d^2 log p~({v}) / d{v}_i^2 per sample, shape [N].")
        simple("sm_loss", "sm_objective",
               "Exact score-matching loss (Hyvarinen 2005), the batch mean of\n"
               f"        sum_i 1/2 score_i^2 + d score_i / d{v}_i, constants included.",
               "{}.mean()")
        methods.append(Method(
            "reconstruct", arg, "torch.Tensor",
            f"The autoencoder view (Swersky et al. 2011): a gradient step of size 1 on\n"
            f"        the free energy, {v} + score({v}), shape [N, {D}].",
            (f"return {v} + self.score({v})",)))
        methods += self.energy_method()
        methods += self.hidden_methods()
        methods += self.sm_terms_method()
        methods += self.visible_methods()
        methods += self.gaussian_methods()
        return methods

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
            methods.append(Method(
                f"sample_{name}", f"{v}: torch.Tensor, generator: torch.Generator | None = None",
                "torch.Tensor",
                f"A draw of {name} ~ p({name} | {v}), shape [N, {size}]; units are "
                "independent given " + v + ".",
                tuple(lines)))
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

    def visible_methods(self) -> list[Method]:
        conditional = self.conditionals.visible
        if conditional is None:
            return []
        v = self.visible
        hidden = list(self.checked.hidden)
        args = ", ".join(f"{h}: torch.Tensor" for h in hidden)
        prologue = self.hidden_prologue()
        planner = self.hidden_planner
        iso = conditional.isotropic is not None
        constant = iso and conditional.isotropic.is_number
        outputs = ["_visible_linear"] + ([] if constant else
                                         ["_visible_scale"] if iso else ["_visible_precision"])
        lines, values = self.body(planner, outputs, prologue)
        linear = values[0]
        shape = f"[N, {self.dim}]"
        noise = ("noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, "
                 "device=mean.device)")
        if constant:  # p(v | h) = N(b / c, I / c) with a number c
            c = float(conditional.isotropic)
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

    def gaussian_methods(self) -> list[Method]:
        if self.conditionals.gaussian_precision is None:
            return []
        v, D = self.visible, self.dim
        lines, (precision,) = self.body(self.planner, ["_gaussian_precision"],
                                        self.param_prologue(), per_sample=False)
        zero = f"factor.new_zeros(1, self.{D})"
        return [
            Method("_gaussian_precision", "", "torch.Tensor",
                   f"d^2 F / d{v}^2, constant because F is quadratic in {v}: the precision.",
                   tuple(lines + [f"return {precision}"])),
            Method("_gaussian", "", "tuple[torch.Tensor, torch.Tensor, torch.Tensor]",
                   f"Cholesky factor L of the precision, the mean and log Z: F({v}) = 1/2 "
                   f"{v}^T P {v} - b^T {v} + F(0)\n        with b = score(0), so log Z = "
                   "-F(0) + 1/2 b^T P^-1 b + D/2 log(2 pi) - sum log diag L.",
                   ("factor = self._cholesky(self._gaussian_precision())",
                    f"zero = {zero}",
                    "linear = self.score(zero)[0]",
                    "mean = torch.cholesky_solve(linear[:, None], factor)[:, 0]",
                    "log_z = (",
                    "    -self.free_energy(zero)[0]",
                    "    + 0.5 * (linear * mean).sum()",
                    f"    + 0.5 * self.{D} * math.log(2 * math.pi)",
                    "    - torch.log(torch.diagonal(factor)).sum()",
                    ")",
                    "return factor, mean, log_z")),
            Method("log_partition", "", "torch.Tensor",
                   f"log Z = log of the integral of exp(-F({v})) d{v}, exact (F is quadratic).",
                   ("return self._gaussian()[2]",)),
            Method("log_prob", f"{v}: torch.Tensor", "torch.Tensor",
                   f"log p({v}) = -F({v}) - log Z, normalised, shape [N].",
                   (f"return -self.free_energy({v}) - self.log_partition()",)),
            Method("sample", "n: int, generator: torch.Generator | None = None", "torch.Tensor",
                   f"n exact draws from p({v}) = N(P^-1 b, P^-1), shape [n, {D}].",
                   ("factor, mean, _ = self._gaussian()",
                    "shape = (n, mean.shape[0])",
                    "noise = torch.randn(shape, generator=generator, dtype=mean.dtype, "
                    "device=mean.device)",
                    "offset = torch.linalg.solve_triangular(factor.mT, noise.T, upper=True)",
                    "return mean + offset.T"), counts=("n",)),
        ]


def _bare(code: str) -> str:
    """Python scalar code without redundant outer parentheses."""
    return ast.unparse(ast.parse(code, mode="eval"))


def signature(method: Method) -> str:
    """The `def` line, its parameters one per line when it would be too long."""
    params = f"self, {method.params}" if method.params else "self"
    line = f"    def {method.name}({params}) -> {method.returns}:"
    if len(line) <= LINE_LENGTH:
        return line
    inner = "".join(f"        {p.strip()},\n" for p in _split_params(params))
    return f"    def {method.name}(\n{inner}    ) -> {method.returns}:"


def _split_params(params: str) -> list[str]:
    """Split a parameter list at top-level commas (not inside brackets)."""
    parts, depth, current = [], 0, ""
    for char in params:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += char in "[("
        depth -= char in "])"
        current += char
    return parts + [current]
