"""The functions of the language that SymPy lacks, as SymPy functions of their own.

Their derivatives are stated in closed form in terms of the functions themselves
(softplus' = sigmoid, sigmoid' = sigmoid (1 - sigmoid), logcosh' = tanh), so derived
expressions reuse the forward values instead of re-forming exponentials that overflow in
float32. relu's derivative is a step, sign(relu(x)): 0 at the kink, as autograd has it.
"""

from __future__ import annotations

import sympy as sp
from sympy.concrete.expr_with_limits import ExprWithLimits


def _latex_call(name: str, argument: str, exp: str | None) -> str:
    """f(x), or f^{n}(x) when SymPy's LaTeX printer asks for a power (f(x)^n)."""
    power = "" if exp is None else f"^{{{exp}}}"
    return rf"{name}{power}\left({argument}\right)"


class _PositiveOfReal(sp.Function):
    """A function of one argument, positive wherever that argument is real."""

    nargs = 1

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_positive(self):
        return self.args[0].is_real


class softplus(_PositiveOfReal):  # noqa: N801 - printed as written in specs
    """softplus(x) = log(1 + exp(x)), evaluated stably by the printer."""

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    @classmethod
    def eval(cls, x):
        if x.is_zero:
            return sp.log(2)
        return None

    def _eval_evalf(self, prec):
        return sp.log(1 + sp.exp(self.args[0]))._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        return _latex_call(r"\operatorname{softplus}", printer._print(self.args[0]), exp)


class sigmoid(_PositiveOfReal):  # noqa: N801
    """sigmoid(x) = 1 / (1 + exp(-x))."""

    def fdiff(self, argindex=1):
        return self * (1 - self)

    @classmethod
    def eval(cls, x):
        if x.is_zero:
            return sp.Rational(1, 2)
        return None

    def _eval_evalf(self, prec):
        return (1 / (1 + sp.exp(-self.args[0])))._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        return _latex_call(r"\sigma", printer._print(self.args[0]), exp)


class log1p(sp.Function):  # noqa: N801
    """log1p(x) = log(1 + x), accurate for small x."""

    nargs = 1

    def fdiff(self, argindex=1):
        return 1 / (1 + self.args[0])

    @classmethod
    def eval(cls, x):
        if x.is_zero:
            return sp.S.Zero
        return None

    def _eval_is_real(self):
        arg = self.args[0]
        if (1 + arg).is_positive:
            return True
        return None

    def _eval_is_extended_real(self):
        """False where 1 + x is never positive: log1p(-2 - x^2) is complex (or -inf)."""
        one_plus = 1 + self.args[0]
        if one_plus.is_positive:
            return True
        if one_plus.is_nonpositive:
            return False
        return None

    def _eval_evalf(self, prec):
        return sp.log(1 + self.args[0])._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        return _latex_call(r"\log", "1 + " + printer._print(self.args[0]), exp)


class logsigmoid(sp.Function):  # noqa: N801
    """logsigmoid(x) = log sigmoid(x) = -softplus(-x), negative, finite for every x."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sigmoid(-self.args[0])

    @classmethod
    def eval(cls, x):
        if x.is_zero:
            return -sp.log(2)
        return None

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_negative(self):
        return self.args[0].is_real

    def _eval_evalf(self, prec):
        return (-sp.log(1 + sp.exp(-self.args[0])))._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        return _latex_call(r"\log\sigma", printer._print(self.args[0]), exp)


class _NonnegativeOfReal(sp.Function):
    """A function of one argument, nonnegative wherever that argument is real."""

    nargs = 1

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_nonnegative(self):
        return self.args[0].is_real


class logcosh(_NonnegativeOfReal):  # noqa: N801
    """logcosh(x) = log cosh(x) = x + softplus(-2 x) - log 2, where cosh would overflow."""

    def fdiff(self, argindex=1):
        return sp.tanh(self.args[0])

    @classmethod
    def eval(cls, x):
        if x.is_zero:
            return sp.S.Zero
        return None

    def _eval_evalf(self, prec):
        return sp.log(sp.cosh(self.args[0]))._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        return _latex_call(r"\log\cosh", printer._print(self.args[0]), exp)


class relu(_NonnegativeOfReal):  # noqa: N801
    """relu(x) = max(x, 0); its derivative, a step, is written sign(relu(x))."""

    def fdiff(self, argindex=1):
        return sp.sign(self)

    @classmethod
    def eval(cls, x):
        if x.is_nonnegative:
            return x
        if x.is_nonpositive:
            return sp.S.Zero
        return None

    def _eval_evalf(self, prec):
        return sp.Max(self.args[0], 0)._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        return _latex_call(r"\operatorname{relu}", printer._print(self.args[0]), exp)


class logaddexp(sp.Function):  # noqa: N801
    """logaddexp(a, b) = log(exp(a) + exp(b)); d/da = sigmoid(a - b), a form that never
    overflows (torch.logaddexp computes the value the same way)."""

    nargs = 2

    def fdiff(self, argindex=1):
        a, b = self.args
        return sigmoid(a - b) if argindex == 1 else sigmoid(b - a)

    def _eval_is_real(self):
        return self.args[0].is_real and self.args[1].is_real

    def _eval_evalf(self, prec):
        a, b = self.args
        return sp.log(sp.exp(a) + sp.exp(b))._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        arguments = ", ".join(printer._print(a) for a in self.args)
        return _latex_call(r"\operatorname{logaddexp}", arguments, exp)


class softmax_weight(sp.Function):  # noqa: N801
    """softmax_weight(e, l) = exp(e - l), the weight of one term of l = logsumexp(e).
    A function of its own so the planner computes e and l once each and subtracts them
    last: e - l is then exactly 0 for a dominant term, where the same sum formed term by
    term (-D log s - |v - mu|^2 / 2 s^2 - l + ...) rounds to +-0.1 at |v| ~ 1e3 in float32
    and the weights stop summing to 1."""

    nargs = 2

    def fdiff(self, argindex=1):
        return self if argindex == 1 else -self

    def _eval_is_real(self):
        return self.args[0].is_real and self.args[1].is_real

    def _eval_is_positive(self):
        return self._eval_is_real()

    def _eval_evalf(self, prec):
        return sp.exp(self.args[0] - self.args[1])._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        body = rf"e^{{{printer._print(self.args[0] - self.args[1])}}}"
        return rf"\left({body}\right)^{{{exp}}}" if exp is not None else body


class LogSumExp(ExprWithLimits):
    """log sum_{limits} exp(function): a reduction like Sum, whose body is the exponent
    (so SymPy never folds exp(log(pi[k]) + x) into pi[k] exp(x) and loses the stable
    form). Its derivative is the softmax-weighted sum of the body's,
        d logsumexp(k: e[k]) = sum(k: exp(e[k] - logsumexp(k: e[k])) de[k]),
    where every exponent is <= 0 (see energydsl.compiler.algebra.diff)."""

    def _eval_is_extended_real(self):
        return self.function.is_extended_real

    def _eval_is_real(self):
        return self.function.is_real

    def _eval_evalf(self, prec):
        return sp.log(sp.Sum(sp.exp(self.function), *self.limits).doit())._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        indices = ", ".join(printer._print(limit[0]) for limit in self.limits)
        body = rf"\log \sum_{{{indices}}} e^{{{printer._print(self.function)}}}"
        return rf"\left({body}\right)^{{{exp}}}" if exp is not None else body


def logsumexp(body: sp.Expr, limits) -> sp.Expr:
    """The normal form of logsumexp over `limits` of `body`: an index the body does not
    use adds log of its size, terms free of every summed index come out
    (logsumexp(k: c + e[k]) = c + logsumexp(k: e[k])), nested reductions merge."""
    limits = [tuple(limit) for limit in limits]
    body = sp.sympify(body)
    if isinstance(body, LogSumExp):
        inner = {limit[0] for limit in body.limits}
        if not inner & {limit[0] for limit in limits}:
            return logsumexp(body.function, [*limits, *body.limits])
    outside = sp.S.Zero
    used = [limit for limit in limits if limit[0] in body.free_symbols]
    for limit in limits:
        if limit not in used:
            outside += sp.log(limit[2] - limit[1] + 1)
    if not used:
        return outside + body
    summed = {limit[0] for limit in used}
    terms = sp.Add.make_args(body)
    constant = sp.Add(*[t for t in terms if not t.free_symbols & summed])
    inside = sp.Add(*[t for t in terms if t.free_symbols & summed])
    return outside + constant + LogSumExp(inside, *used)


class MatrixInverse(sp.Function):
    """MatrixInverse(P, k, l): entry (k, l) of the inverse of the symmetric positive
    definite matrix a definition P[k, l] names (a latent Gaussian's covariance). The
    planner computes it once, by Cholesky; P must not depend on the data, so its
    derivatives with respect to v are 0."""

    nargs = 3

    @classmethod
    def eval(cls, matrix, row, column):
        """Symmetric: the indices in name order, so equal entries are equal terms."""
        if str(column) < str(row):
            return cls(matrix, column, row)
        return None

    def _eval_is_real(self):
        return True

    def _latex(self, printer, exp=None):
        matrix, row, column = self.args
        body = rf"\left({printer._print(matrix.label)}^{{-1}}\right)_{{{row} {column}}}"
        return rf"{body}^{{{exp}}}" if exp is not None else body


class LogDet(sp.Function):
    """LogDet(P): log det of the symmetric positive definite matrix a definition P[k, l]
    names, by Cholesky (2 sum log diag L)."""

    nargs = 1

    def _eval_is_real(self):
        return True

    def _latex(self, printer, exp=None):
        return _latex_call(r"\log\det", printer._print(self.args[0].label), exp)


class RowSpaceFactor(sp.Function):
    """RowSpaceFactor(A, b, a) = R[b, a] for the [H, D] matrix A a definition names (A
    must not depend on the data): an H x H matrix with R^T R = A A^T (`_row_space` in a
    generated module: the Cholesky factor of A's Gram matrix when H <= D). With
    Q = A^T R^+, whose columns are orthonormal and hold A's rows, a first layer
    u = A v + c is u = R^T y + c in the coordinates y = Q^T v, and the Laplacian in v of
    a function of u is its Laplacian in y: the forward propagation of derivatives
    (compiler/chain.py) works there, and needs only R, because everything it computes
    reads A through R^T R."""

    nargs = 3

    def _eval_is_real(self):
        return True

    def _latex(self, printer, exp=None):
        matrix, row, column = self.args
        body = (rf"R({printer._print(matrix.label)})"
                rf"_{{{printer._print(row)} {printer._print(column)}}}")
        return rf"{body}^{{{exp}}}" if exp is not None else body


class JacobianSquares(sp.Function):
    """JacobianSquares(A, (kind, X), ...): per sample, a deep model's Laplacian terms
    sum over its "square" steps of sum(h: w[h] sum(a: J[a, h]^2)), where J starts as
    R(A) (`RowSpaceFactor`) and runs through the steps in order: "scale" multiplies its
    columns by the per-sample vector X[h], "matmul" maps it by the weights, J @ X^T
    ("matmul_t": J @ X), and "square" adds the term with weights w = X. Each X is the
    IndexedBase of a parameter or a definition (one formal index, or a parameter's two).
    compiler/chain.py builds it for a plain chain of layers; a generated module computes
    it with `_jacobian_squares`, which forms its gradients block by block in cache."""

    def _eval_is_real(self):
        return True

    def _latex(self, printer, exp=None):
        steps = ", ".join(rf"\mathrm{{{step.args[0]}}}\,{printer._print(step.args[1].label)}"
                          for step in self.args[1:])
        body = rf"\mathcal{{J}}_{{{printer._print(self.args[0].label)}}}\left({steps}\right)"
        return rf"{body}^{{{exp}}}" if exp is not None else body
