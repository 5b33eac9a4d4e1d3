"""An independent reference for `energydsl check`: the spec evaluated directly.

This interpreter walks the checked AST with plain torch broadcasting over named axes;
it shares nothing with the symbolic pipeline (no SymPy, no planner, no printer). The
free energy of a latent model is then -log of the sum (discrete units, by enumeration)
or integral (continuous units, by trapezoidal quadrature) of exp(-E(v, h)) over every
joint hidden configuration, so the reference does not assume the units independent.
Derivatives come from autograd on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from energydsl.compiler import syntax as ast
from energydsl.compiler.domains import DOMAINS
from energydsl.compiler.functions import FUNCTIONS
from energydsl.compiler.ir import CheckedModel, Param
from energydsl.errors import UsageError

BATCH_AXIS = "@n"
MAX_CONFIGURATIONS = 2_000_000  # joint hidden states (or quadrature nodes) enumerated
CONFIG_AXIS = "@c"


@dataclass(frozen=True)
class Value:
    """A tensor whose axes have names (index names, or the batch/configuration axes)."""

    tensor: torch.Tensor | float
    axes: tuple[str, ...] = ()


def _align(value: Value, axes: tuple[str, ...]) -> torch.Tensor | float:
    if not value.axes:
        return value.tensor
    t = value.tensor.permute([value.axes.index(a) for a in axes if a in value.axes])
    shape = []
    present = [a for a in axes if a in value.axes]
    sizes = dict(zip(present, t.shape, strict=True))
    for a in axes:
        shape.append(sizes.get(a, 1))
    return t.reshape(shape)


def _union(*values: Value) -> tuple[str, ...]:
    axes: list[str] = []
    for special in (BATCH_AXIS, CONFIG_AXIS):
        if any(special in v.axes for v in values):
            axes.append(special)
    for v in values:
        axes += [a for a in v.axes if a not in axes]
    return tuple(axes)




class Interpreter:
    """Evaluates spec expressions on concrete tensors."""

    def __init__(self, model: CheckedModel, sizes: dict[str, int], scalars: dict[str, float],
                 tensors: dict[str, torch.Tensor], batched: dict[str, str]):
        self.model = model
        self.sizes = sizes
        self.scalars = scalars
        self.tensors = tensors
        self.batched = batched  # tensor name -> its leading named axis
        self.let_values: dict[str, Value] = {}

    def let(self, name: str) -> Value:
        if name not in self.let_values:
            let = self.model.lets[name]
            self.let_values[name] = self.eval(let.value)
            # axes of a let value use the let's own index names
        return self.let_values[name]

    def eval(self, node: ast.Expr) -> Value:
        if isinstance(node, ast.Number):
            return Value(float(node.text))
        if isinstance(node, ast.Name):
            name = node.name
            if name in self.sizes:
                return Value(float(self.sizes[name]))
            if name in self.scalars:
                return Value(float(self.scalars[name]))
            if name in self.model.lets:
                return self.let(name)
            return self._tensor(name, ())
        if isinstance(node, ast.Indexed):
            indices = tuple(i.name for i in node.indices)
            if node.base.name in self.model.lets:
                value = self.let(node.base.name)
                formal = tuple(i.name for i in self.model.lets[node.base.name].indices)
                rename = dict(zip(formal, indices, strict=True))
                return Value(value.tensor, tuple(rename.get(a, a) for a in value.axes))
            return self._tensor(node.base.name, indices)
        if isinstance(node, ast.Call):
            arg = self.eval(node.args[0])
            function = FUNCTIONS[node.func.name].reference
            if isinstance(arg.tensor, float):
                return Value(float(function(torch.tensor(arg.tensor, dtype=torch.float64))))
            return Value(function(arg.tensor), arg.axes)
        if isinstance(node, ast.Unary):
            value = self.eval(node.operand)
            return Value(-value.tensor, value.axes) if node.op == "-" else value
        if isinstance(node, ast.Binary):
            left, right = self.eval(node.left), self.eval(node.right)
            axes = _union(left, right)
            a, b = _align(left, axes), _align(right, axes)
            if node.op == "+":
                return Value(a + b, axes)
            if node.op == "-":
                return Value(a - b, axes)
            if node.op == "*":
                return Value(a * b, axes)
            if node.op == "/":
                return Value(a / b, axes)
            return Value(a**b, axes)
        if isinstance(node, ast.SumExpr):
            body = self.eval(node.body)
            factor, dims = 1.0, []
            for binding in node.bindings:
                if binding.index.name in body.axes:
                    dims.append(body.axes.index(binding.index.name))
                else:  # sum_i c = N c
                    factor *= self.sizes[self.model.index_ranges[binding.index]]
            names = {b.index.name for b in node.bindings}
            axes = tuple(a for a in body.axes if a not in names)
            if node.reduction == "logsumexp":  # log sum_i exp(c) = c + log N
                tensor = torch.logsumexp(body.tensor, dim=dims) if dims else body.tensor
                return Value(tensor + math.log(factor), axes)
            tensor = body.tensor.sum(dim=dims) if dims else body.tensor
            return Value(tensor * factor, axes)
        raise TypeError(node)  # pragma: no cover

    def _tensor(self, name: str, indices: tuple[str, ...]) -> Value:
        tensor = self.tensors[name]
        if name in self.batched:
            return Value(tensor, (self.batched[name], *indices))
        return Value(tensor, indices)


def hidden_configurations(model: CheckedModel, sizes: dict[str, int], dtype: torch.dtype
                          ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every joint hidden state (or quadrature node) and its log-weight."""
    if not model.hidden:
        return {}, torch.zeros(1, dtype=dtype)
    units = {name: sizes[variable.shape[0]] for name, variable in model.hidden.items()}
    domains = {name: DOMAINS[variable.domain] for name, variable in model.hidden.items()}
    count = math.prod(domains[name].state_count(k) for name, k in units.items())
    if count > MAX_CONFIGURATIONS:
        raise UsageError(f"the check enumerates every hidden configuration (quadrature nodes "
                         f"for continuous units): {count:,} at these sizes, more than "
                         f"{MAX_CONFIGURATIONS:,}; use smaller hidden sizes with --size")
    per_variable = {name: domains[name].states(k, dtype) for name, k in units.items()}
    # the product of the variables' state sets: every combination, by its row numbers
    rows = torch.meshgrid(*[torch.arange(len(q.log_weights)) for q in per_variable.values()],
                          indexing="ij")
    states, log_weight = {}, torch.zeros(count, dtype=dtype)
    for (name, quad), row in zip(per_variable.items(), rows, strict=True):
        states[name] = quad.nodes[row.reshape(-1)]
        log_weight = log_weight + quad.log_weights[row.reshape(-1)]
    return states, log_weight


def _grid_neighbours(height: int, width: int, connectivity: int) -> torch.Tensor:
    """The neighbourhood mask pixel by pixel, written out plainly (no broadcasting)."""
    count = height * width
    mask = torch.zeros(count, count, dtype=torch.bool)
    for a in range(count):
        for b in range(count):
            dr = abs(a // width - b // width)
            dc = abs(a % width - b % width)
            mask[a, b] = (dr + dc <= 1) if connectivity == 4 else (max(dr, dc) <= 1)
    return mask


def _dense_from_stencil(stencil: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A grid-masked raw parameter is stored as [9, D], entry (3 (dr + 1) + (dc + 1), p)
    holding raw[p, q] for the pixel q = p + (dr, dc): written into a [D, D] matrix entry by
    entry (zero where q is off the image)."""
    count = height * width
    dense = stencil.new_zeros(count, count)
    for p in range(count):
        row, col = divmod(p, width)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if 0 <= row + dr < height and 0 <= col + dc < width:
                    q = (row + dr) * width + col + dc
                    dense[p, q] = stencil[3 * (dr + 1) + dc + 1, p]
    return dense


def constrained_value(param: Param, raw: torch.Tensor, sizes: dict[str, int],
                      scalars: dict[str, float]) -> torch.Tensor:
    """A constrained parameter's value from its raw tensor (see model.Constraint)."""
    constraint = param.constraint
    if constraint is None:
        return raw
    if constraint.positive:
        return torch.nn.functional.softplus(raw)
    mask = None
    if constraint.mask is not None:
        def number(text: str) -> int:
            return int(sizes.get(text, scalars.get(text, float(text) if text[0].isdigit()
                                                   else 0)))

        grid = constraint.mask
        height, width = number(grid.height), number(grid.width)
        raw = _dense_from_stencil(raw, height, width)
        mask = _grid_neighbours(height, width, number(grid.connectivity))
    value = raw
    if constraint.symmetric:
        value = (raw + raw.transpose(0, 1)) / 2
    if mask is not None:
        value = value * mask.to(value.dtype)
    if constraint.diagonally_dominant:
        eye = torch.eye(value.shape[0], dtype=value.dtype)
        off = value * (1 - eye)
        diagonal = off.abs().sum(dim=1) + torch.nn.functional.softplus(torch.diagonal(raw)) \
            + 1e-6
        value = off + eye * diagonal[:, None]
    return value


@dataclass
class Reference:
    """The spec's energy on concrete parameters (raw values, constrained here) and vector
    constants (`constants`: their values, as the module holds them)."""

    model: CheckedModel
    sizes: dict[str, int]
    scalars: dict[str, float]
    params: dict[str, torch.Tensor]
    constants: dict[str, torch.Tensor] = field(default_factory=dict)

    def energy(self, v: torch.Tensor, hidden: dict[str, torch.Tensor] | None = None,
               paired: bool = False) -> torch.Tensor:
        """E(v, h) (or F(v)): [N, C] for every sample against every hidden state, or [N]
        when `paired` (row n of v goes with row n of each hidden tensor)."""
        model = self.model
        tensors = {name: constrained_value(model.params[name], raw, self.sizes, self.scalars)
                   for name, raw in self.params.items()}
        tensors.update(self.constants)
        tensors[model.visible.name] = v
        batched = {model.visible.name: BATCH_AXIS}
        for name, state in (hidden or {}).items():
            tensors[name] = state
            batched[name] = BATCH_AXIS if paired else CONFIG_AXIS
        value = Interpreter(model, self.sizes, self.scalars, tensors, batched).eval(
            model.energy.value)
        if model.energy.role == "log_density":
            value = Value(-value.tensor, value.axes)
        axes = (BATCH_AXIS,) if paired else (BATCH_AXIS, CONFIG_AXIS)
        energy = _align(value, axes)
        if not isinstance(energy, torch.Tensor):
            energy = torch.tensor(energy, dtype=v.dtype)
        energy = energy.reshape(energy.shape + (1,) * (len(axes) - energy.ndim))
        columns = () if paired else (max([len(t) for t in (hidden or {}).values()] or [1]),)
        return energy.expand(v.shape[0], *columns)

    def configurations(self, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return hidden_configurations(self.model, self.sizes, dtype)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = -log sum_h exp(-E(v, h)), or the spec's F(v); per sample, shape [N]."""
        states, log_weight = self.configurations(v.dtype)
        energy = self.energy(v, states)
        if not states:
            return energy[:, 0]
        return -torch.logsumexp(-energy + log_weight, dim=1)

    def posterior(self, v: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every hidden state and its probability given each sample: [N, C]."""
        states, log_weight = self.configurations(v.dtype)
        energy = self.energy(v, states)
        return states, torch.softmax(-energy + log_weight, dim=1)


def reference_free_energy(model: CheckedModel, sizes: dict[str, int], scalars: dict[str, float],
                          params: dict[str, torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    """F(v) by enumeration/quadrature of the spec's own energy."""
    return Reference(model, sizes, scalars, params).free_energy(v)


def check_sizes(model: CheckedModel, overrides: dict[str, int]) -> dict[str, int]:
    """Small sizes for checking: enumeration and quadrature must stay cheap."""
    sizes: dict[str, int] = {}
    continuous = [v for v in model.hidden.values() if not DOMAINS[v.domain].discrete]
    for name, dim in model.dims.items():
        if name in overrides:
            sizes[name] = overrides[name]
            continue
        if dim.derived_from is not None:
            sizes[name] = _evaluate_dim(dim.derived_from, sizes)
            continue
        size = min(dim.default, 5)
        for variable in model.hidden.values():
            if variable.shape[0] == name:
                if DOMAINS[variable.domain].discrete:
                    size = min(size, 3)
                else:
                    size = min(size, 2 if len(continuous) == 1 and
                               not any(DOMAINS[h.domain].discrete
                                       for h in model.hidden.values()) else 1)
        sizes[name] = size
    return sizes


def _evaluate_dim(expr: ast.Expr, sizes: dict[str, int]) -> int:
    if isinstance(expr, ast.Number):
        return int(float(expr.text))
    if isinstance(expr, ast.Name):
        return sizes[expr.name]
    if isinstance(expr, ast.Unary):
        value = _evaluate_dim(expr.operand, sizes)
        return -value if expr.op == "-" else value
    if isinstance(expr, ast.Binary):
        a, b = _evaluate_dim(expr.left, sizes), _evaluate_dim(expr.right, sizes)
        return {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0,
                "^": a**b}[expr.op]
    raise TypeError(expr)  # pragma: no cover


__all__ = ["Interpreter", "check_sizes", "hidden_configurations", "reference_free_energy"]
