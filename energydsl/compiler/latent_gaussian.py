"""Stage 4, marginalise (continued): real hidden units that interact among themselves.

When the energy is quadratic in a real hidden vector z with couplings between its units
(probabilistic PCA, factor analysis, a Gaussian RBM with hidden-hidden couplings), the
units are not independent given v, but the integral is still Gaussian. With
    E(v, z) = 1/2 z^T P z - b(v)^T z + c(v) + (terms without z),
P[k, l] = d^2 E / dz_k dz_l, b = -dE/dz at z = 0, c = E at z = 0:
    log int exp(-E) dz = K/2 log(2 pi) - 1/2 log det P + 1/2 b^T P^-1 b - c,
and z | v ~ N(P^-1 b, P^-1). P must not depend on v or z (else the energy is not
quadratic, or the normaliser of z | v changes with v: both refused with a positioned
error); it must be positive definite, which the generated code checks when it factorises
it (Cholesky), with a clear error.
"""

from __future__ import annotations

import sympy as sp

from energydsl.compiler.algebra import diff, make_sum, substitute_index
from energydsl.compiler.ir import Definition, SymbolicModel
from energydsl.compiler.lets import at_zero, depends_on, quadratic
from energydsl.compiler.sympy_functions import LogDet, MatrixInverse


class NotJointlyGaussian(Exception):
    """Why the energy is not a Gaussian in the hidden vector (a message for the user)."""


def joint_gaussian(model: SymbolicModel, name: str, energy: sp.Expr, tidy
                   ) -> tuple[sp.Expr, sp.Idx, dict[str, sp.Expr], dict[str, Definition]]:
    """log Z(v) of hidden variable `name` from the terms of E that hold it; the index of
    its units; the conditional's mean and precision; the precision's definition."""
    z = model.hidden[name]
    dim = model.checked.hidden[name].shape[0]
    k, l = model.index(dim, "k"), model.index(dim, "l")
    lookup = model.definition_of
    first = diff(energy, z, (k,), lookup)
    precision = tidy(diff(first, z, (l,), lookup))
    if not quadratic(first, precision, z, lookup):
        raise NotJointlyGaussian(f"its energy is not quadratic in '{name}'")
    if depends_on(precision, model.visible, lookup):
        raise NotJointlyGaussian(
            f"the coefficient of {name}[k] {name}[l] depends on "
            f"'{model.checked.visible.name}', so the normaliser of {name} given "
            f"{model.checked.visible.name} changes with it (not supported)")
    linear = tidy(-at_zero(first, model, z))
    constant = at_zero(energy, model, z)
    base = sp.IndexedBase(f"_{name}_precision", real=True)
    definitions = {str(base): Definition(base, (k, l), precision)}
    k2, l2 = model.index(dim, "k"), model.index(dim, "l")
    b_k2 = substitute_index(linear, k, k2)
    b_l2 = substitute_index(linear, k, l2)
    form = make_sum(b_k2 * MatrixInverse(base, k2, l2) * b_l2,
                    [(k2, 0, k2.upper), (l2, 0, l2.upper)])
    size = k.upper + 1
    log_z = size * sp.log(2 * sp.pi) / 2 - LogDet(base) / 2 + form / 2 - constant
    mean = make_sum(MatrixInverse(base, k, l2) * substitute_index(linear, k, l2),
                    [(l2, 0, l2.upper)])
    coefficients = {"mean": mean, "precision": base[k, l], "variance": MatrixInverse(base, k, k)}
    return log_z, k, coefficients, definitions
