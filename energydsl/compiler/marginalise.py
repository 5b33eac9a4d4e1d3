"""Stage 4, marginalise: joint energy E(v, h) -> free energy F(v) = -log sum_h exp(-E).

Per hidden unit, by SymPy: the terms of E that involve a generic unit h[u] form its
unit energy e(h_u; v); summing exp(-e) over {0,1} or {-1,+1}, or integrating it over
the reals (a Gaussian unit) or the positive reals (a Gamma-type unit), gives the unit's
log-partition log z_u(v), and F = E_0(v) - sum_u log z_u(v). Terms coupling two units
(h[j] h[k], or h inside a nonlinear function of a sum over units) are errors, as are
integrals that diverge or have no closed form. Convergence conditions on constants
become checks on the defaults here and in the generated constructor.
"""

from __future__ import annotations

import sympy as sp

from energydsl.compiler.algebra import (
    REDUCTIONS,
    distribute,
    make_sum,
    normalise,
    substitute_index,
    tidy,
)
from energydsl.compiler.bounds import always_true, sign_assumptions
from energydsl.compiler.domains import DOMAINS, UnitFailure
from energydsl.compiler.functions import stable_forms
from energydsl.compiler.ir import FreeEnergyModel, HiddenUnit, SymbolicModel
from energydsl.compiler.latent_gaussian import NotJointlyGaussian, joint_gaussian
from energydsl.compiler.lets import inline
from energydsl.compiler.notation import dsl_str
from energydsl.errors import SpecError, error, shorten


def _hidden_occurrences(term: sp.Expr, hidden: dict[str, sp.IndexedBase]) -> dict[str, set]:
    found: dict[str, set] = {}
    for node in term.atoms(sp.Indexed):
        for name, base in hidden.items():
            if node.base == base:
                found.setdefault(name, set()).add(node.indices)
    return found


def _split_outer_sum(term: sp.Expr, base: sp.IndexedBase) -> tuple[sp.Expr, sp.Sum | None]:
    """term = coefficient * Sum(...): the one factor holding the hidden variable `base`,
    if it is a sum. The coefficient (a sum over v, say) does not involve the units, so
    sum(k: h[k]) * sum(i: v[i]) is linear in each unit, not an interaction."""
    factors = sp.Mul.make_args(term)
    holding = [f for f in factors if f.has(base)]
    if len(holding) != 1 or not isinstance(holding[0], sp.Sum):
        return term, None
    outer = holding[0]
    return sp.Mul(*[f for f in factors if f is not outer]), outer


class _Marginaliser:
    def __init__(self, model: SymbolicModel, span):
        self.model = model
        self.span = span
        self.conditions: list[sp.Basic] = []
        self.back: dict = {}  # placeholder -> the spec expression it stands for

    def fail(self, message: str, hidden: str | None = None, index: str | None = None
             ) -> SpecError:
        """A positioned error: at the hidden variable's (indexed) use when we know it."""
        span = self.span
        if hidden is not None:
            found = _find_use(self.model.checked.energy.value, hidden, index)
            span = found or span
        return error(message, span)

    def show(self, expr: sp.Basic) -> str:
        return dsl_str(expr.xreplace(self.back))

    def _interacting(self, term: sp.Expr, name: str) -> bool:
        """Whether `term` couples units of hidden variable `name` to each other (z[k] z[l],
        or z inside a nonlinear function of a sum over its units)."""
        occurrences = _hidden_occurrences(term, self.model.hidden)
        if set(occurrences) != {name}:
            return False
        index_sets = occurrences[name]
        if len(index_sets) > 1:
            return True
        _, outer = _split_outer_sum(term, self.model.hidden[name])
        return outer is None or next(iter(index_sets))[0] not in {
            limit[0] for limit in outer.limits}

    def unit_energies(self, energy: sp.Expr) -> tuple[sp.Expr, dict[str, tuple], dict]:
        """Split E into E_0(v) and, per hidden variable, (unit index, symbol, e(h_u)); the
        terms of a variable whose units interact and whose domain integrates coupled
        units jointly (real: a Gaussian) are kept whole, by variable."""
        hidden = self.model.hidden
        visible_part = sp.S.Zero
        units: dict[str, list] = {}
        terms = sp.Add.make_args(distribute(normalise(energy)))
        joint: dict[str, list] = {
            name: [] for name in hidden
            if DOMAINS[self.model.checked.hidden[name].domain].couples
            and any(self._interacting(term, name) for term in terms)}
        for name in hidden:
            dim = self.model.checked.hidden[name].shape[0]
            domain = DOMAINS[self.model.checked.hidden[name].domain]
            units[name] = [None, sp.Symbol(name, **domain.assumptions), [], dim]
        for term in terms:
            occurrences = _hidden_occurrences(term, hidden)
            if not occurrences:
                visible_part += term
                continue
            if len(occurrences) == 1 and next(iter(occurrences)) in joint:
                joint[next(iter(occurrences))].append(term)
                continue
            if len(occurrences) > 1:
                a, b = sorted(occurrences)[:2]
                raise self.fail(f"cannot marginalise: hidden variables '{a}' and '{b}' interact "
                                f"in the term {dsl_str(term)}", b)
            (name, index_sets), = occurrences.items()
            if len(index_sets) > 1:
                uses = sorted(f"{name}[{', '.join(map(str, ix))}]" for ix in index_sets)
                second = sorted(str(ix[0]) for ix in index_sets)[-1]
                raise self.fail(f"cannot marginalise '{name}': units {' and '.join(uses)} "
                                f"interact in the term {dsl_str(term)}", name, second)
            (indices,) = index_sets
            coefficient, outer = _split_outer_sum(term, hidden[name])
            bound = {limit[0] for limit in outer.limits} if outer is not None else set()
            if outer is None or indices[0] not in bound:
                raise self.fail(f"cannot marginalise '{name}': in the term {dsl_str(term)} the "
                                f"units of '{name}' interact (they appear inside a nonlinear "
                                f"function of a sum over them)", name)
            index = indices[0]
            if units[name][0] is None:  # name the generic unit as the spec's first sum does
                units[name][0] = index
            unit_index, symbol, pieces, _ = units[name]
            limits = [limit for limit in outer.limits if limit[0] != index]
            body = substitute_index(outer.function, index, unit_index)
            body = body.xreplace({hidden[name][unit_index]: symbol})
            if body.atoms(sp.Indexed) & {hidden[name][unit_index]}:
                raise self.fail(f"cannot marginalise '{name}' in the term {dsl_str(term)}", name)
            pieces.append(coefficient * make_sum(body, limits))
        return visible_part, {n: (u if u is not None else self.model.index(dim, "u"), s,
                                  sp.Add(*p)) for n, (u, s, p, dim) in units.items()
                              if n not in joint}, {n: sp.Add(*t) for n, t in joint.items()}

    def log_partition(self, name: str, domain: str, symbol: sp.Symbol, e: sp.Expr
                      ) -> tuple[sp.Expr, dict]:
        """log z(v) of one generic unit; whatever SymPy fails on becomes a positioned error
        naming the unit and its energy, never a traceback."""
        try:
            return self._log_partition(name, domain, symbol, e)
        except SpecError:
            raise
        except Exception as exc:  # noqa: BLE001 - SymPy's limits are reported, not crashed on
            energy, reason = shorten(self.show(e), 120), shorten(str(exc), 120)
            raise self.fail(f"cannot marginalise hidden variable '{name}': SymPy could not "
                            f"derive the sum or integral over it of exp(-({energy}))"
                            f" ({type(exc).__name__}: {reason})", name) from None

    def _log_partition(self, name: str, domain_name: str, symbol: sp.Symbol, e: sp.Expr
                       ) -> tuple[sp.Expr, dict]:
        if symbol not in e.free_symbols:
            raise self.fail(f"the energy does not depend on hidden variable '{name}'", name)
        domain = DOMAINS[domain_name]
        try:
            if domain.discrete:
                marginal = domain.log_partition(name, symbol, e, self.show)
                return marginal.log_partition, marginal.coefficients or {}
            # sums and tensor entries as placeholders: a small integral, whatever the sizes
            keep = set(self.model.consts.values()) | set(self.model.dims.values())
            placeholders, e_local = _abstract_visible(e, symbol, keep)
            self.back = {dummy: original for original, dummy in placeholders.items()}
            marginal = domain.log_partition(name, symbol, e_local, self.show)
        except UnitFailure as exc:
            raise self.fail(str(exc), name) from None
        condition = marginal.condition
        self._record(name, condition.xreplace(self.back) if condition is not True else True)
        return marginal.log_partition.xreplace(self.back), {
            k: v.xreplace(self.back) for k, v in (marginal.coefficients or {}).items()}

    def _record(self, name: str, condition) -> None:
        """Keep a convergence condition on constants; reject one that fails or depends on
        parameters or v."""
        condition = sp.simplify(condition) if condition is not True else sp.true
        if condition == sp.true:
            return
        if condition == sp.false:
            raise self.fail(f"the integral over hidden variable '{name}' diverges", name)
        if always_true(inline(condition, None, self.model.definition_of)):
            return  # let alpha[k] = exp(a[k]): alpha[k] > 0 seen through the let
        constants = set(self.model.consts.values())
        if not condition.free_symbols <= constants:
            raise self.fail(f"the integral over '{name}' converges only if "
                            f"{self.show(condition)}, which this compiler cannot guarantee",
                            name)
        defaults = {self.model.consts[c.name]: self.model.checked.consts[c.name].default
                    for c in self.model.consts.values()}
        if condition.xreplace({k: sp.nsimplify(v) for k, v in defaults.items()}) != sp.true:
            shown = ", ".join(f"{k} = {v}" for k, v in sorted(
                (str(c), defaults[c]) for c in condition.free_symbols))
            raise self.fail(f"the integral over '{name}' converges only if "
                            f"{dsl_str(condition)}, but {shown}", name)
        self.conditions.append(condition)


def _abstract_visible(e: sp.Expr, h: sp.Symbol, keep: set) -> tuple[dict, sp.Expr]:
    """Replace each sum and tensor entry (and scalar parameter) by a real placeholder, so
    SymPy integrates a small expression whatever the spec's sizes; constants in `keep`
    stay, so convergence conditions can name them."""
    placeholders: dict[sp.Expr, sp.Dummy] = {}

    def visit(node: sp.Expr) -> sp.Expr:
        if isinstance(node, (sp.Indexed, *REDUCTIONS)) or (
                isinstance(node, sp.Symbol) and node != h and node not in keep):
            if h not in node.free_symbols:
                if node not in placeholders:  # keeping what is known of its sign
                    placeholders[node] = sp.Dummy("x", **sign_assumptions(node))
                return placeholders[node]
        if not node.args:
            return node
        return node.func(*[visit(a) for a in node.args])

    return placeholders, visit(e)


def _find_use(expr, name: str, index: str | None):
    """Span of the first `name[index]` (or `name[...]`) in the energy's AST."""
    from energydsl.compiler import syntax as ast

    stack = [expr]
    while stack:  # depth first, left to right: the first use as the user reads it
        node = stack.pop()
        if isinstance(node, ast.Indexed) and node.base.name == name and (
                index is None or node.indices[0].name == index):
            return node.span
        if isinstance(node, ast.Binary):
            stack += [node.right, node.left]
        elif isinstance(node, ast.Unary):
            stack.append(node.operand)
        elif isinstance(node, ast.Call):
            stack += list(reversed(node.args))
        elif isinstance(node, ast.SumExpr):
            stack.append(node.body)
    return None


def marginalise(model: SymbolicModel) -> FreeEnergyModel:
    """Derive F(v) by marginalising every hidden unit; a free-energy spec passes through."""
    decl = model.checked.energy
    if not decl.joint:  # F(v), or log p~(v) = -F(v), given directly
        return FreeEnergyModel(model, model.energy, None)
    worker = _Marginaliser(model, decl.value.span)
    try:
        visible_part, units, joint = worker.unit_energies(model.energy)
    except SpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - SymPy's limits are reported, not crashed on
        reason = shorten(str(exc), 120)
        raise error(f"cannot marginalise the hidden variables: SymPy could not split the "
                    f"energy into per-unit terms ({type(exc).__name__}: {reason})",
                    decl.value.span) from None
    free_energy = visible_part
    hidden = {}
    definitions: dict = {}
    for name, e in joint.items():  # coupled real units: one Gaussian integral
        try:
            log_z, index, coefficients, defined = joint_gaussian(
                model, name, e, lambda x: tidy(x, model))
        except NotJointlyGaussian as exc:
            raise worker.fail(f"cannot marginalise real hidden variable '{name}', whose "
                              f"units interact: {exc}", name) from None
        definitions.update(defined)
        symbol = sp.Symbol(name, real=True)
        hidden[name] = HiddenUnit(name, model.checked.hidden[name].domain, index, symbol, e,
                                  log_z, coefficients)
        free_energy = free_energy - log_z
    for name, (index, symbol, e) in units.items():
        domain = model.checked.hidden[name].domain
        log_z, coefficients = worker.log_partition(name, domain, symbol, e)
        log_z = stable_forms(sp.expand(log_z))
        group, coefficients = DOMAINS[domain].group_log_partition(log_z, coefficients, index)
        hidden[name] = HiddenUnit(name, domain, index, symbol, e, log_z, coefficients)
        free_energy = free_energy - group
    free_energy = normalise(free_energy)
    hidden = {name: hidden[name] for name in model.hidden}  # in the spec's order
    return FreeEnergyModel(model, free_energy, model.energy, hidden, worker.conditions,
                           visible_part, definitions)


__all__ = ["marginalise"]
