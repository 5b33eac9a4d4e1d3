"""Random *valid* specs, for property-based tests of the whole compiler.

A drawn spec is a random sum of the terms the language is for: a Gaussian term in the
visible vector (real, binary or spin data), linear terms, functions (softplus, sigmoid,
tanh, square, logsigmoid, logcosh, erf, sin, relu, abs, log1p of a square) of random
linear forms (sometimes named by `let`s, sometimes nested two deep), quadratic forms,
mixtures (logsumexp, or log of a sum of exponentials), per-entry scales given by vector
constants, positive parameters, and zero to two hidden layers (binary, spin, categorical,
real or positive units; real units sometimes coupled to each other) coupled to the data
bilinearly or through a nonlinear coefficient, as an energy or a joint log density.
Names, index names, sizes and number spellings are random too. Every such
spec must compile, and everything the compiler derives must agree with autograd on the
spec's own energy (`energydsl.check.checks.check_compiled`); a spec that does not is a
compiler bug, and hypothesis shrinks it to a small one.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass

from hypothesis import strategies as st

from energydsl.compiler.functions import FUNCTIONS
from energydsl.compiler.names import (
    DEFINITION_LOCALS,
    KEYWORDS,
    METHOD_LOCALS,
    MODULE_NAMES,
    PYTHON_BUILTINS,
    RESERVED_ATTRIBUTES,
)

# Names a spec may not use, whatever it declares (the checker's own tables: the
# generator must produce valid specs, not test the tables).
_TAKEN = (set(KEYWORDS) | set(FUNCTIONS) | MODULE_NAMES | PYTHON_BUILTINS | RESERVED_ATTRIBUTES
          | METHOD_LOCALS | DEFINITION_LOCALS | set(keyword.kwlist) | set(keyword.softkwlist))

# Positive constants, spelled in the ways the grammar allows.
_POSITIVE = ("0.5", "1/2", "1", "2", "0.25", "1.5e-1", "3/4", ".5", "1.0")


def _usable(name: str) -> bool:
    return (name not in _TAKEN and not name.startswith(("mean_", "sample_"))
            and not name.endswith("_value"))


_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,5}", fullmatch=True).filter(_usable)


@dataclass(frozen=True)
class GeneratedSpec:
    """A spec's text, and the dimensions of its continuous hidden layers: the check
    integrates those jointly by quadrature, so tests keep them at one unit."""

    text: str
    continuous_dims: tuple[str, ...]


class _Builder:
    """Fresh names from one pool, declarations and energy terms as text."""

    def __init__(self, draw: st.DrawFn):
        self.draw = draw
        self.used: set[str] = set()
        self.lines: list[str] = []
        self.terms: list[str] = []  # energy contributions, each with its sign
        self.params = 0
        self.sizes: dict[str, int] = {}  # each dimension's default

    def fresh(self) -> str:
        name = self.draw(_NAMES.filter(lambda n: n not in self.used))
        self.used.add(name)
        return name

    def indices(self, count: int) -> list[str]:
        """Index names for one sum: distinct from each other and from every declared
        name (an index may not shadow one)."""
        return [self.fresh() for _ in range(count)]

    def dim(self, low: int = 2, high: int = 6) -> str:
        name = self.fresh()
        self.sizes[name] = self.draw(st.integers(low, high))
        self.lines.append(f"dim {name} = {self.sizes[name]}")
        return name

    def param(self, *shape: str) -> str:
        name = self.fresh()
        init = self.draw(st.sampled_from(["", " ~ normal(0.01)", " ~ zeros", " ~ ones",
                                          " ~ uniform(-0.1, 0.1)", " ~ constant(0.5)"]))
        if init in ("", " ~ ones", " ~ constant(0.5)") and self.draw(st.integers(0, 4)) == 0:
            init += " where positive"  # softplus of a raw value: any value works here
        brackets = f"[{', '.join(shape)}]" if shape else ""
        self.lines.append(f"param {name}{brackets}{init}")
        self.params += 1
        return name

    def vector_constant(self, size: str) -> str:
        """A positive constant vector over `size`: listed, or filled with one value."""
        name = self.fresh()
        if self.draw(st.booleans()):
            values = [self.draw(st.sampled_from(_POSITIVE)) for _ in range(self.sizes[size])]
            self.lines.append(f"const {name}[{size}] = [{', '.join(values)}]")
        else:
            self.lines.append(f"const {name}[{size}] = {self.positive()}")
        return name

    def positive(self) -> str:
        return self.draw(st.sampled_from(_POSITIVE))

    def linear_form(self, visible: str, size: str, out: str, features: str) -> str:
        """sum(i: A[k, i] * v[i]) (+ c[k]) with A [features, size], over the output index
        `out`, which the caller binds."""
        weights = self.param(features, size)
        (i,) = self.indices(1)
        form = f"sum({i}: {weights}[{out}, {i}] * {visible}[{i}])"
        if self.draw(st.booleans()):
            form += f" + {self.param(features)}[{out}]"
        return form


_SMOOTH = {  # f(z) as text, for a linear form z; each finite everywhere
    "softplus": "softplus({})",
    "sigmoid": "sigmoid({})",
    "tanh": "tanh({})",
    "square": "square({})",
    "log1p_square": "log1p(({})^2)",
    "logsigmoid": "logsigmoid({})",
    "logcosh": "logcosh({})",
    "erf": "erf({})",
    "sin": "sin({})",
    # kinked: derivatives almost everywhere, as autograd's; random points miss the kinks
    "relu": "relu({})",
    "abs": "abs({})",
}


def _feature_term(b: _Builder, visible: str, size: str) -> None:
    """sign * sum(k: f(z[k])) with z a random linear form, maybe named by a `let`,
    maybe with a second function around the first (as the DEM's softplus of sigmoids)."""
    features = b.dim()
    (k,) = b.indices(1)
    if b.draw(st.booleans()):  # name it: let z[k] = ...
        let, let_index = b.fresh(), b.fresh()
        definition = b.linear_form(visible, size, let_index, features)
        b.lines.append(f"let {let}[{let_index}] = {definition}")
        form = f"{let}[{k}]"
    else:
        form = b.linear_form(visible, size, k, features)
    function = b.draw(st.sampled_from(sorted(_SMOOTH)))
    inner = _SMOOTH[function].format(form)
    # + only for a square: - z^2 could make F a Gaussian with an indefinite precision,
    # whose normaliser and samplers rightly refuse the random parameters of the check
    sign = "+" if function == "square" else b.draw(st.sampled_from(["+", "-"]))
    if b.draw(st.integers(0, 3)) == 0:  # a composition, two deep
        outer = b.draw(st.sampled_from(["softplus", "sigmoid", "tanh"]))
        inner = f"{outer}({inner})"
    scale = b.draw(st.sampled_from(["", "0.5 * ", "2 * "]))
    b.terms.append(f"{sign} {scale}sum({k}: {inner})")


def _mixture_term(b: _Builder, visible: str, size: str) -> None:
    """- logsumexp(k: z[k] - c sum(i: (v[i] - M[k, i])^2)), a mixture's -log density
    (z a linear form of v or a weight), or + logsumexp(k: z[k]) (convex, linear growth),
    or the same written as log of a sum of exponentials (rewritten by the compiler)."""
    features = b.dim()
    k, i = b.indices(2)
    gate = b.linear_form(visible, size, k, features) if b.draw(st.booleans()) \
        else f"{b.param(features)}[{k}]"
    if b.draw(st.booleans()):
        body = f"{gate} - {b.positive()} * sum({i}: ({visible}[{i}] - " \
               f"{b.param(features, size)}[{k}, {i}])^2)"
        sign = "-"
    else:
        body, sign = gate, "+"
    if b.draw(st.booleans()):
        b.terms.append(f"{sign} logsumexp({k}: {body})")
    else:
        b.terms.append(f"{sign} log(sum({k}: exp({body})))")


def _visible_terms(b: _Builder, visible: str, size: str) -> None:
    (i,) = b.indices(1)
    b.terms.append(f"+ {b.positive()} * sum({i}: {visible}[{i}]^2)")
    for _ in range(b.draw(st.integers(0, 3))):
        kind = b.draw(st.sampled_from(["linear", "feature", "feature", "quadratic_form",
                                       "square_of_sum", "scalar_param", "power_of_sum",
                                       "mixture", "scaled_gaussian"]))
        if kind == "linear":
            (i,) = b.indices(1)
            b.terms.append(f"- sum({i}: {b.param(size)}[{i}] * {visible}[{i}])")
        elif kind == "feature":
            _feature_term(b, visible, size)
        elif kind == "quadratic_form":  # 1/2 v^T Q^T Q v: positive semidefinite
            k, i, j = b.indices(3)
            weights = b.param(size, size)
            b.terms.append(f"+ 1/2 * sum({k}: sum({i}: {weights}[{k}, {i}] * {visible}[{i}]) * "
                           f"sum({j}: {weights}[{k}, {j}] * {visible}[{j}]))")
        elif kind == "square_of_sum":
            (i,) = b.indices(1)
            b.terms.append(f"+ {b.positive()} * sum({i}: {b.param(size)}[{i}] * "
                           f"{visible}[{i}])^2")
        elif kind == "power_of_sum":
            _power_of_sum(b, visible, size)
        elif kind == "scaled_gaussian":  # a fixed positive scale per entry
            (i,) = b.indices(1)
            b.terms.append(f"+ sum({i}: {b.vector_constant(size)}[{i}] * {visible}[{i}]^2)")
        elif kind == "mixture":
            _mixture_term(b, visible, size)
        else:
            (i,) = b.indices(1)
            b.terms.append(f"+ {b.param()} * sum({i}: {visible}[{i}]^2) / 10")


def _power_of_sum(b: _Builder, visible: str, size: str) -> None:
    """c (sum_i w_i v_i)^p, the sum weighted or not (then the score has a term constant
    across v's entries, which the planner once summed over a size-1 axis), alone or
    inside a sum over features."""
    power = b.draw(st.sampled_from(["2", "3", "4"]))
    scale = b.draw(st.sampled_from(["1/10", "1/50", "2"]))
    (i,) = b.indices(1)
    shape = b.draw(st.sampled_from(["plain", "weighted", "features"]))
    if shape == "plain":
        b.terms.append(f"+ {scale} * sum({i}: {visible}[{i}])^{power}")
    elif shape == "weighted":
        b.terms.append(f"+ {scale} * sum({i}: {b.param(size)}[{i}] * {visible}[{i}])^{power}")
    else:
        features = b.dim()
        (k,) = b.indices(1)
        b.terms.append(f"+ {scale} * sum({k}: {b.param(features)}[{k}] * "
                       f"sum({i}: {visible}[{i}])^{power})")


def _hidden_layer(b: _Builder, visible: str, size: str, continuous: bool
                  ) -> tuple[str, str, str]:
    """A hidden variable and its terms: (name, domain, its dimension). At most one layer
    per spec is continuous: the check integrates continuous layers jointly."""
    domains = ["binary", "spin", "categorical", "real", "positive"] if continuous \
        else ["binary", "spin", "categorical"]
    domain = b.draw(st.sampled_from(domains))
    units = b.dim(1, 4)
    name = b.fresh()
    b.lines.append(f"hidden {name} : {domain}[{units}]")
    i, j = b.indices(2)
    if domain == "positive":  # a Gamma-type unit: rate 1 + phi^2/2 > 0, shape gamma > 0
        gamma = b.fresh()
        b.lines.append(f"const {gamma} = {b.draw(st.sampled_from(['0.5', '1.0', '1.7', '2']))}")
        filters = b.param(size, units)
        b.terms.append(f"+ sum({j}: {name}[{j}] * (1 + 1/2 * sum({i}: {filters}[{i}, {j}] * "
                       f"{visible}[{i}])^2) + (1 - {gamma}) * log({name}[{j}]))")
        return name, domain, units
    coupling = b.param(size, units)
    if b.draw(st.booleans()):
        b.terms.append(f"- sum({i}, {j}: {visible}[{i}] * {coupling}[{i}, {j}] * "
                       f"{name}[{j}])")
    else:  # a nonlinear coefficient of each unit
        function = b.draw(st.sampled_from(["tanh", "sigmoid", "softplus"]))
        b.terms.append(f"- sum({j}: {name}[{j}] * {function}(sum({i}: {coupling}[{i}, {j}] * "
                       f"{visible}[{i}])))")
    if b.draw(st.booleans()):
        (j,) = b.indices(1)
        b.terms.append(f"- sum({j}: {b.param(units)}[{j}] * {name}[{j}])")
    if domain == "real":  # large enough that F's precision stays positive definite
        (j,) = b.indices(1)
        b.terms.append(f"+ {b.draw(st.sampled_from(['2', '3', '5/2']))} * sum({j}: "
                       f"{name}[{j}]^2)")
        if b.draw(st.booleans()):  # units coupled to each other: integrated jointly
            features = b.dim(1, 3)
            m, j = b.indices(2)
            b.terms.append(f"+ 1/2 * sum({m}: sum({j}: {b.param(features, units)}[{m}, {j}]"
                           f" * {name}[{j}])^2)")
    return name, domain, units


@st.composite
def power_of_sum_specs(draw: st.DrawFn) -> GeneratedSpec:
    """One to three powers of sums of the visible vector, sometimes with a Gaussian term
    or a linear one: the specs whose score may be constant across v's entries, which
    the planner once summed over a size-1 axis (these need not be normalisable)."""
    b = _Builder(draw)
    model = draw(_NAMES.filter(lambda n: n[0].isupper()))
    b.used.add(model)
    size = b.dim()
    visible = b.fresh()
    b.lines.append(f"visible {visible} : real[{size}]")
    if draw(st.booleans()):
        (i,) = b.indices(1)
        b.terms.append(f"+ {b.positive()} * sum({i}: {visible}[{i}]^2)")
    for _ in range(draw(st.integers(1, 3))):
        _power_of_sum(b, visible, size)
    if b.params == 0 or draw(st.booleans()):
        (i,) = b.indices(1)
        b.terms.append(f"- sum({i}: {b.param(size)}[{i}] * {visible}[{i}])")
    body = " ".join(b.terms).removeprefix("+ ")
    energy = f"free energy {b.fresh()}({visible}) = {body}"
    return GeneratedSpec("\n".join([f"model {model}", *b.lines, energy]) + "\n", ())


@st.composite
def valid_specs(draw: st.DrawFn) -> GeneratedSpec:
    """A random valid spec (see the module docstring)."""
    b = _Builder(draw)
    model = draw(_NAMES.filter(lambda n: n[0].isupper()))
    b.used.add(model)
    size = b.dim()
    visible = b.fresh()
    data = draw(st.sampled_from(["real", "real", "real", "binary", "spin"]))
    b.lines.append(f"visible {visible} : {data}[{size}]")
    _visible_terms(b, visible, size)
    hidden: list[tuple[str, str, str]] = []
    for _ in range(draw(st.integers(0, 2))):
        continuous = all(domain in ("binary", "spin") for _, domain, _ in hidden)
        hidden.append(_hidden_layer(b, visible, size, continuous))
    if b.params == 0:  # `check` differentiates with respect to the parameters
        (i,) = b.indices(1)
        b.terms.append(f"- sum({i}: {b.param(size)}[{i}] * {visible}[{i}])")
    terms = list(b.terms)
    order = draw(st.permutations(range(len(terms))))
    body = " ".join(terms[k] for k in order).removeprefix("+ ")
    if hidden:
        args = ", ".join([visible, *(h[0] for h in hidden)])
        if draw(st.booleans()):
            energy = f"energy {b.fresh()}({args}) = {body}"
        else:  # the joint log density
            energy = f"log density {b.fresh()}({args}) = -({body})"
    else:
        kind = draw(st.sampled_from(["energy", "free energy", "log density"]))
        value = f"-({body})" if kind == "log density" else body
        energy = f"{kind} {b.fresh()}({visible}) = {value}"
    text = "\n".join([f"model {model}", *b.lines, energy]) + "\n"
    continuous = tuple(units for _, domain, units in hidden if domain in ("real", "positive"))
    return GeneratedSpec(text, continuous)


_COUPLINGS = {  # a coupling of the pair (a, b), as text over a matrix M; each symmetric
    "symmetrised": "({M}[{a}, {b}] + {M}[{b}, {a}])",
    "product": "{M}[{a}, {b}] * {M}[{b}, {a}]",
    "shared": "{M}[{a}, {b}]",  # not symmetric: the pair sum must not be taken as one
    "declared": "{M}[{a}, {b}]",  # M declared `where symmetric`
    "elementwise": "exp({t}[{a}] * {t}[{b}])",
    "none": "1",
}


@st.composite
def pair_and_chain_specs(draw: st.DrawFn) -> GeneratedSpec:
    """A visible Gaussian under stacked sigmoid or tanh layers (one to three lets deep)
    and a sum over pairs of the last layer's units: sum(k: f(sum(a, b: L[k, a] L[k, b]
    C[a, b] t[a] t[b]))) or sum(a, b: C[a, b] t[a] t[b]), with the coupling C of
    `_COUPLINGS`, written inline or through lets (`let q[a, b] = ...`). The layer widths
    are often at least 8, where the planner takes a symmetric sum over each pair once."""
    b = _Builder(draw)
    model = draw(_NAMES.filter(lambda n: n[0].isupper()))
    b.used.add(model)
    size = b.dim(*draw(st.sampled_from([(2, 6), (10, 14)])))  # the planner's choices
    visible = b.fresh()  # turn on which of D and the widths is the smaller
    b.lines.append(f"visible {visible} : real[{size}]")
    (i,) = b.indices(1)
    b.terms.append(f"+ {b.positive()} * sum({i}: {visible}[{i}]^2)")
    layer, width = visible, size
    for _ in range(draw(st.integers(1, 3))):
        units = b.dim(*draw(st.sampled_from([(2, 5), (8, 10)])))
        name, formal = b.fresh(), b.fresh()
        function = draw(st.sampled_from(["sigmoid", "tanh"]))
        b.lines.append(f"let {name}[{formal}] = "
                       f"{function}({b.linear_form(layer, width, formal, units)})")
        layer, width = name, units
    a, c = b.indices(2)
    kind = draw(st.sampled_from(sorted(_COUPLINGS)))
    matrix = b.param(width, width) if kind in ("symmetrised", "product", "shared") else ""
    if kind == "declared":
        matrix = b.fresh()
        b.lines.append(f"param {matrix}[{width}, {width}] ~ normal(0.3) where symmetric")
        b.params += 1
    def pair_of(x: str, y: str) -> str:
        coupling = _COUPLINGS[kind].format(M=matrix, t=layer, a=x, b=y)
        return f"{coupling} * {layer}[{x}] * {layer}[{y}]"

    pair = pair_of(a, c)
    if draw(st.booleans()):  # through a let
        q, formal_a, formal_b = b.fresh(), b.fresh(), b.fresh()
        b.lines.append(f"let {q}[{formal_a}, {formal_b}] = {pair_of(formal_a, formal_b)}")
        pair = f"{q}[{a}, {c}]"
    if draw(st.booleans()):
        experts = b.dim()
        (k,) = b.indices(1)
        mixing = b.param(experts, width)
        function = draw(st.sampled_from(["softplus", "sigmoid", "tanh"]))
        b.terms.append(f"- sum({k}: {function}(sum({a}, {c}: {mixing}[{k}, {a}] * "
                       f"{mixing}[{k}, {c}] * {pair})))")
    else:
        b.terms.append(f"- sum({a}, {c}: {pair})")
    body = " ".join(b.terms).removeprefix("+ ")
    energy = f"free energy {b.fresh()}({visible}) = {body}"
    return GeneratedSpec("\n".join([f"model {model}", *b.lines, energy]) + "\n", ())
