"""The helpers generated modules carry (emit/templates/runtime/) and the fusions that call
them (plan/fusions.py): each helper's values and gradients against plain torch and
autograd in float64 (second derivatives included, which `check` and the sliced
estimators take), the row-space factor on full-rank, rank-deficient and wide slopes, and
the fusion's rewrite of a method's steps."""

from __future__ import annotations

import pytest
import torch

from energydsl.compiler.emit.module import RUNTIME, runtime_source
from energydsl.compiler.plan.fusions import reuse_values, scale_and_square
from energydsl.compiler.plan.program import Step

F64 = torch.float64


@pytest.fixture(scope="module")
def helpers() -> dict:
    """Every runtime helper, executed from its template into one namespace."""
    scope: dict = {"torch": torch}
    for name in RUNTIME:
        exec(compile(runtime_source(name), f"<runtime {name}>", "exec"), scope)  # noqa: S102
    return scope


def test_every_registered_helper_defines_its_name(helpers):
    for name in RUNTIME:
        assert callable(helpers[name]), name


def _slope(kind: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    if kind == "full rank":
        return torch.randn(4, 9, generator=generator, dtype=F64)
    if kind == "dependent rows":  # H <= D, but the Gram matrix is singular
        rows = torch.randn(3, 9, generator=generator, dtype=F64)
        return torch.cat([rows, rows[:1] * 2.0])
    if kind == "wider than the input":  # H > D
        return torch.randn(6, 3, generator=generator, dtype=F64)
    slope = torch.randn(4, 9, generator=generator, dtype=F64)  # a dead unit: Cholesky
    slope[1] = 0.0                                             # stops at its pivot
    return slope


@pytest.mark.parametrize("kind", ["full rank", "dependent rows", "wider than the input",
                                  "a zero row"])
def test_row_space_factor_has_the_slopes_gram(helpers, kind):
    slope = _slope(kind)
    r = helpers["_row_space"](slope, slope @ slope.T)
    h = slope.shape[0]
    assert r.shape == (h, h)
    torch.testing.assert_close(r.T @ r, slope @ slope.T, rtol=1e-10, atol=1e-10)
    if kind == "full rank":  # the Cholesky factor
        torch.testing.assert_close(r, torch.triu(r))


@pytest.mark.parametrize("kind", ["full rank", "dependent rows", "wider than the input",
                                  "a zero row"])
def test_row_space_factor_gradients_match_the_gram_matrix(helpers, kind):
    """Whichever factorisation runs, a function of R^T R has the gradient of the same
    function of slope slope^T (both differentiated by autograd)."""
    slope = _slope(kind).requires_grad_()
    weights = torch.randn(slope.shape[0], slope.shape[0], dtype=F64)
    r = helpers["_row_space"](slope, slope @ slope.T)
    (through_r,) = torch.autograd.grad((weights * (r.T @ r)).sum(), slope)
    (direct,) = torch.autograd.grad((weights * (slope @ slope.T)).sum(), slope)
    torch.testing.assert_close(through_r, direct, rtol=1e-8, atol=1e-8)


def test_square_sum_first_and_second_derivatives(helpers):
    t = torch.randn(3, 4, 5, dtype=F64, requires_grad=True)
    for dim in (1, 2):
        torch.testing.assert_close(helpers["_square_sum"](t, dim), (t * t).sum(dim))
        assert torch.autograd.gradcheck(lambda t, dim=dim: helpers["_square_sum"](t, dim), (t,))
        assert torch.autograd.gradgradcheck(lambda t, dim=dim: helpers["_square_sum"](t, dim),
                                            (t,))


@pytest.mark.parametrize("scale_shape", [(3, 1, 5), (3, 4, 5), (5,)])
def test_scale_and_square_first_and_second_derivatives(helpers, scale_shape):
    fused = helpers["_scale_and_square"]
    t = torch.randn(3, 4, 5, dtype=F64, requires_grad=True)
    scale = torch.randn(scale_shape, dtype=F64, requires_grad=True)
    scaled, squares = fused(t, scale, 1)
    torch.testing.assert_close(scaled, t * scale)
    torch.testing.assert_close(squares, (t * t).sum(1))
    assert torch.autograd.gradcheck(lambda t, s: fused(t, s, 1), (t, scale))
    assert torch.autograd.gradgradcheck(lambda t, s: fused(t, s, 1), (t, scale))


@pytest.mark.parametrize("used", [0, 1])
def test_scale_and_square_with_one_output_unused(helpers, used):
    """Autograd passes None for an output nothing reads; the gradient is then the other
    output's alone."""
    t = torch.randn(3, 4, 5, dtype=F64, requires_grad=True)
    scale = torch.randn(3, 1, 5, dtype=F64, requires_grad=True)
    weight = torch.randn(3, 4, 5, dtype=F64)[:, : 4 if used == 0 else 1].squeeze(1)
    out = helpers["_scale_and_square"](t, scale, 1)[used]
    fused = torch.autograd.grad((weight * out).sum(), (t, scale), allow_unused=True)
    plain = (t * scale, (t * t).sum(1))[used]
    expected = torch.autograd.grad((weight * plain).sum(), (t, scale), allow_unused=True,
                                   materialize_grads=True)
    torch.testing.assert_close(fused[0], expected[0])
    torch.testing.assert_close(fused[1] if fused[1] is not None else torch.zeros_like(scale),
                               expected[1])


def test_a_scalar_scale_takes_the_plain_path(helpers):
    t = torch.randn(2, 3, 4, dtype=F64)
    scaled, squares = helpers["_scale_and_square"](t, 0.5, 2)
    torch.testing.assert_close(scaled, 0.5 * t)
    torch.testing.assert_close(squares, (t * t).sum(2))


def _step(name: str, code: str, *deps: str) -> Step:
    return Step(name, code, f"formula of {name}", deps)


def test_a_layer_and_its_squares_fuse_into_one_step():
    steps = [_step("g", "torch.sigmoid(u)", "u"),
             _step("t", "(j @ self.V.T)", "j"),
             _step("jac", "g[:, None] * (1 - g[:, None]) * t", "g", "t"),
             _step("other", "jac.sum(dim=1)", "jac"),
             _step("sq", "_square_sum(t, 1)", "t")]
    fused = scale_and_square(steps)
    assert [s.name for s in fused] == ["g", "t", "jac, sq", "other"]
    step = fused[2]
    assert step.code == "_scale_and_square(t, g[:, None] * (1 - g[:, None]), 1)"
    assert step.comment == "formula of jac\nformula of sq"
    assert set(step.deps) == {"g", "t"}


def test_the_squares_step_first_moves_the_fused_step_up_when_its_inputs_are_ready():
    steps = [_step("g", "torch.sigmoid(u)", "u"), _step("t", "j @ W", "j"),
             _step("sq", "_square_sum(t, 1)", "t"), _step("reads_sq", "sq * 2", "sq"),
             _step("jac", "t * g[:, None]", "g", "t")]
    assert [s.name for s in scale_and_square(steps)] == ["g", "t", "jac, sq", "reads_sq"]


@pytest.mark.parametrize("steps", [
    # T read twice in the product
    [_step("t", "j @ W", "j"), _step("jac", "t * t * g", "t", "g"),
     _step("sq", "_square_sum(t, 1)", "t")],
    # not a product
    [_step("t", "j @ W", "j"), _step("jac", "t + g", "t", "g"),
     _step("sq", "_square_sum(t, 1)", "t")],
    # the scale is computed only after the squares are read
    [_step("t", "j @ W", "j"), _step("sq", "_square_sum(t, 1)", "t"),
     _step("g", "torch.sigmoid(sq)", "sq"), _step("jac", "t * g", "t", "g")],
])
def test_steps_that_do_not_match_are_left_alone(steps):
    assert scale_and_square(steps) == steps


def test_a_value_computed_before_is_read_not_formed_again():
    steps = [_step("g", "torch.sigmoid(u)", "u"),
             _step("slope", "g * (1 - g)", "g"),
             _step("curvature", "g * (1 - g) * (2 * g - 1)", "g"),
             _step("again", "torch.sigmoid(u)", "u")]
    out = reuse_values(steps)
    assert [s.code for s in out] == ["torch.sigmoid(u)", "g * (1 - g)", "slope * (2 * g - 1)",
                                     "g"]
    assert "slope" in out[2].deps and "g" in out[3].deps
    scope = {"torch": torch, "u": torch.randn(4, dtype=F64)}
    for before, after in zip(steps, out, strict=True):  # the same values, step by step
        value = eval(after.code, scope)  # noqa: S307
        torch.testing.assert_close(value, eval(before.code, scope))  # noqa: S307
        scope[after.name] = value


@pytest.mark.parametrize("draw", ["torch.bernoulli(p)", "torch.rand(3, generator=gen)",
                                  "torch.randn_like(p) * 2"])
def test_random_draws_are_never_merged(draw):
    steps = [_step("p", "torch.sigmoid(u)", "u"), _step("a", draw, "p"),
             _step("b", draw, "p")]
    assert reuse_values(steps) == steps


def _chain(n: int = 7, a: int = 4, h: int = 5, seed: int = 0):
    """R and the steps of a three-layer chain: square, scale, matmul, square, scale,
    matmul (to 3 outputs), square."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=F64, requires_grad=True)

    r = rand(a, h)
    steps = [("square", rand(n, h)), ("scale", rand(n, h)), ("matmul", rand(h, h)),
             ("square", rand(n, h)), ("scale", rand(n, h)), ("matmul", rand(3, h)),
             ("square", rand(n, 3))]
    return r, steps


@pytest.mark.parametrize("block", [None, 1, 3, 32])
def test_jacobian_squares_against_autograd_of_the_plain_form(helpers, block):
    r, steps = _chain()
    kinds, tensors = tuple(k for k, _ in steps), tuple(t for _, t in steps)
    value = helpers["_jacobian_squares"](r, *steps, block=block)
    expected = helpers["_jacobian_squares_plain"](r, kinds, tensors)
    torch.testing.assert_close(value, expected)
    inputs = (r, *tensors)
    for upstream in (torch.full((7,), 0.25, dtype=F64),                 # a batch mean
                     torch.randn(7, dtype=F64, generator=torch.Generator().manual_seed(1))):
        got = torch.autograd.grad(value, inputs, upstream, retain_graph=True)
        want = torch.autograd.grad(expected, inputs, upstream, retain_graph=True)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)


def test_jacobian_squares_plain_form_against_explicit_jacobians(helpers):
    """The plain form itself, against the Jacobians written out: J_1 = R diag(f_1),
    J_2 = J_1 M_1^T diag(f_2), J_3 = J_2 M_2^T."""
    r, steps = _chain()
    (_, w1), (_, f1), (_, m1), (_, w2), (_, f2), (_, m2), (_, w3) = steps
    for n in range(7):
        j0 = r
        j1 = (j0 * f1[n]) @ m1.T
        j2 = (j1 * f2[n]) @ m2.T
        total_n = (w1[n] * (j0**2).sum(0)).sum() + (w2[n] * (j1**2).sum(0)).sum() + (
            w3[n] * (j2**2).sum(0)).sum()
        torch.testing.assert_close(
            helpers["_jacobian_squares_plain"](r, tuple(k for k, _ in steps),
                                               tuple(t for _, t in steps))[n], total_n)


def test_jacobian_squares_without_a_final_square_and_without_gradients(helpers):
    """Steps after the last square carry no gradient (zero, not uninitialised memory), and
    with nothing requiring a gradient only the value is formed."""
    r, steps = _chain()
    last = torch.randn(7, 3, dtype=F64, requires_grad=True)
    steps = [*steps[:-1], ("scale", last)]   # ends with matmul, scale: no square after
    kinds, tensors = tuple(k for k, _ in steps), tuple(t for _, t in steps)
    value = helpers["_jacobian_squares"](r, *steps, block=3)
    got = torch.autograd.grad(value.sum(), (r, *tensors), allow_unused=True)
    want = torch.autograd.grad(helpers["_jacobian_squares_plain"](r, kinds, tensors).sum(),
                               (r, *tensors), allow_unused=True, materialize_grads=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    with torch.no_grad():
        torch.testing.assert_close(helpers["_jacobian_squares"](r, *steps),
                                   helpers["_jacobian_squares_plain"](r, kinds, tensors))


@pytest.mark.parametrize("size", [1, 2, 3, 8, 9])
def test_circulant_layout_holds_each_pair_once_with_its_weight(helpers, size):
    """Every unordered pair {a, b} of range(size), counted with the layout's weights,
    exactly as often as the full sum counts it: twice off the diagonal, once on it."""
    index, weights = helpers["_circulant_layout"](size, torch.zeros((), dtype=F64))
    assert index.shape == weights.shape == ((size // 2 + 1) * size,)
    counted = torch.zeros(size, size, dtype=F64)
    counted.view(-1).index_add_(0, index, weights)
    counted = counted + counted.T - torch.diag(torch.diagonal(counted))  # {a, b} both ways
    expected = torch.full((size, size), 2.0, dtype=F64) - torch.eye(size, dtype=F64)
    torch.testing.assert_close(counted, expected)


@pytest.mark.parametrize("size", [1, 2, 5, 8, 9])
def test_circulant_pairs_are_the_layouts_entries_of_the_outer_square(helpers, size):
    rows = torch.randn(4, size, dtype=F64, generator=torch.Generator().manual_seed(size))
    index, weights = helpers["_circulant_layout"](size, rows)
    outer = (rows[:, :, None] * rows[:, None, :]).reshape(4, -1)
    torch.testing.assert_close(helpers["_circulant_pairs"](rows), outer[:, index],
                               rtol=0, atol=0)
    matrix = torch.randn(size, size, dtype=F64)
    matrix = matrix + matrix.T
    full = (outer * matrix.reshape(-1)).sum(1)
    torch.testing.assert_close((helpers["_circulant_pairs"](rows) * weights
                                * matrix.reshape(-1)[index]).sum(1), full)


@pytest.mark.parametrize("size", [2, 7, 8])
def test_circulant_pairs_first_and_second_derivatives(helpers, size):
    rows = torch.randn(3, size, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(helpers["_circulant_pairs"], (rows,))
    assert torch.autograd.gradgradcheck(helpers["_circulant_pairs"], (rows,))


def test_circulant_pairs_backward_takes_a_transposed_gradient(helpers):
    """The gradient of `pairs @ w.T` arrives as a transposed view: the sheared sum must
    read it by its strides."""
    rows = torch.randn(5, 8, dtype=F64, requires_grad=True)
    w = torch.randn(3, 40, dtype=F64)
    (got,) = torch.autograd.grad((helpers["_circulant_pairs"](rows) @ w.T).square().sum(),
                                 rows)
    index, _ = helpers["_circulant_layout"](8, rows)
    plain = (rows[:, :, None] * rows[:, None, :]).reshape(5, -1)[:, index]
    (expected,) = torch.autograd.grad((plain @ w.T).square().sum(), rows)
    torch.testing.assert_close(got, expected)


def test_circulant_layout_kept_outside_inference_mode_only(helpers):
    """A layout first made in inference mode is not kept: autograd could not save its
    index for a backward later (index_select's)."""
    helpers["_circulant_layouts"].clear()
    with torch.inference_mode():
        helpers["_circulant_layout"](6, torch.zeros(()))
    assert not helpers["_circulant_layouts"]
    matrix = torch.randn(6, 6, requires_grad=True)
    index, weights = helpers["_circulant_layout"](6, matrix)
    (matrix.reshape(-1).index_select(0, index) * weights).sum().backward()
    assert helpers["_circulant_layout"](6, matrix)[0] is index  # kept, and reused


def test_circulant_pairs_under_torch_func(helpers):
    """grad, vmap of grad, and jacrev through `_circulant_pairs` (its setup_context and
    vmap rule) against the gathered outer square."""
    rows = torch.randn(2, 3, 8, dtype=F64, generator=torch.Generator().manual_seed(5))
    index, _ = helpers["_circulant_layout"](8, rows)

    def plain(r: torch.Tensor) -> torch.Tensor:
        return (r[:, :, None] * r[:, None, :]).reshape(r.shape[0], -1)[:, index]

    def loss(pairs):  # noqa: ANN001, ANN202
        return lambda r: pairs(r).sin().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss(helpers["_circulant_pairs"])))(rows)
    torch.testing.assert_close(per_sample, torch.func.vmap(torch.func.grad(loss(plain)))(rows))
    torch.testing.assert_close(torch.func.jacrev(helpers["_circulant_pairs"])(rows[0]),
                               torch.func.jacrev(plain)(rows[0]))
