"""One pairwise contraction as torch code: the cheapest form that computes it.

opt_einsum orders the contractions; each pairwise step is then lowered to a broadcast
product when nothing is summed (`_as_product`), one matrix product when the operands
share no kept axis (`_as_matmul`, reshaped when the summed or kept axes are blocks), and
`torch.einsum` otherwise, with its letters renamed after the spec's indices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import opt_einsum
import sympy as sp
from opt_einsum.contract import PathInfo

from energydsl.compiler.plan.program import BATCH, Operand

ShapeCode = Callable[[sp.Basic], str]  # an index -> the code of its size


@functools.lru_cache(maxsize=4096)  # the cost estimates ask for the same paths often
def contraction_path(equation: str, shapes: tuple[tuple, ...]) -> PathInfo:
    """opt_einsum's pairwise order ("auto"); for a few operands, the exhaustive search's
    instead when it needs clearly fewer operations ("auto" then uses branch and bound,
    which misses 'na,nb,ba->n' = (a W) . b). On equal counts "auto" is kept: its orders
    measured faster here (fewer large, non-GEMM intermediates)."""
    info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="auto")[1]
    if len(shapes) <= 6:
        best = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="optimal")[1]
        if 5 * best.opt_cost < 4 * info.opt_cost:
            return best
    return info


def natural_order(inputs: str, out_letters: str) -> str:
    """The output letters in the order they first appear in the inputs, the operand with
    the most axes first: the result then shares the layout of its largest input."""
    terms = sorted(inputs.split(","), key=len, reverse=True)
    seen = "".join(dict.fromkeys("".join(terms)))
    return "".join(c for c in seen if c in out_letters)


def pairwise_code(picked: list[Operand], inputs: str, out_letters: str, out_indices: tuple,
                  shape_code: ShapeCode) -> str:
    """The code of one pairwise step: a product, a matrix product or an einsum."""
    letter_index = dict(zip(inputs.replace(",", ""),
                            (i for op in picked for i in op.indices), strict=True))
    args = ", ".join(op.code for op in picked)
    equation = _pretty_equation(inputs, out_letters, picked, out_indices)
    return (_as_product(picked, inputs, out_letters)
            or _as_matvec(picked, inputs, out_letters)
            or _as_rowwise_dot(picked, inputs, out_letters)
            or _as_matmul(picked, inputs, out_letters, letter_index, shape_code)
            or _as_shared_matmul(picked, inputs, out_letters, letter_index)
            or _as_batched_matvec(picked, inputs, out_letters, letter_index)
            or f'torch.einsum("{equation}", {args})')


def _view(code: str, letters: str, target: str) -> str:
    """`code` (axes `letters`) permuted and unsqueezed to broadcast against `target`."""
    present = [c for c in target if c in letters]
    if present != list(letters):
        order = ", ".join(str(letters.index(c)) for c in present)
        code = f"{code}.permute({order})" if len(letters) > 2 else f"{code}.T"
    if len(present) == len(target):
        return code
    if all(c in letters for c in target[len(target) - len(present):]) and \
            target[len(target) - len(present):] == "".join(present):
        return code  # missing leading axes broadcast by themselves
    index = ", ".join(":" if c in letters else "None" for c in target)
    return f"{code}[{index}]"


def _as_product(picked: list[Operand], inputs: str, out_letters: str) -> str | None:
    """A pairwise step that sums nothing is an elementwise (broadcast) product."""
    terms = inputs.split(",")
    if set("".join(terms)) != set(out_letters) or len(terms) != 2:
        return None
    return " * ".join(_view(op.code, letters, out_letters)
                      for op, letters in zip(picked, terms, strict=True))


def _as_matvec(picked: list[Operand], inputs: str, out_letters: str) -> str | None:
    """X[..., s] v[s] -> X @ v (and v[s] X[s, f] -> v @ X): a matrix-vector product,
    which torch runs as one GEMV where einsum('ni,i->n') forms a batched GEMM."""
    terms = inputs.split(",")
    if len(terms) != 2:
        return None
    for (x, xs), (y, ys) in (tuple(zip(picked, terms, strict=True)),
                             tuple(zip(picked, terms, strict=True))[::-1]):
        if len(ys) != 1 or ys not in xs or ys in out_letters:
            continue
        kept = xs.replace(ys, "")
        if kept != out_letters:
            continue
        if xs.endswith(ys):
            return f"{x.code} @ {y.code}"
        if len(xs) == 2:  # [s, f]: v @ X
            return f"{y.code} @ {x.code}"
    return None


def _as_rowwise_dot(picked: list[Operand], inputs: str, out_letters: str) -> str | None:
    """Two operands over the same axes, some summed: (x * y).sum(dims), e.g. 'na,na->n'
    (einsum runs it as N tiny matrix products, forward and backward); a per-sample
    matrix times itself is `_square_sum`."""
    terms = inputs.split(",")
    if len(terms) != 2:
        return None
    (x, xs), (y, ys) = zip(picked, terms, strict=True)
    if set(xs) != set(ys) or len(xs) != len(ys):
        return None
    summed = [k for k, c in enumerate(xs) if c not in out_letters]
    kept = "".join(c for c in xs if c in out_letters)
    if not summed or kept != out_letters:
        return None
    dims = str(summed[0]) if len(summed) == 1 else f"({', '.join(map(str, summed))})"
    if x.code == y.code and xs == ys and len(summed) == 1 and is_per_sample_matrix(x):
        return f"_square_sum({x.code}, {dims})"
    return f"({x.code} * {_view(y.code, ys, xs)}).sum(dim={dims})"


def is_per_sample_matrix(operand: Operand) -> bool:
    """A value with the batch axis and two more (a deep model's per-sample Jacobians):
    the size at which `_square_sum`'s one-pass backward beats autograd's, whose
    per-call overhead wins on smaller values."""
    return BATCH in operand.indices and len(operand.indices) >= 3


def _as_matmul(picked: list[Operand], inputs: str, out_letters: str, letter_index: dict,
               shape_code: ShapeCode) -> str | None:
    """A contraction of two operands over shared letters S, with no shared letter kept,
    as one matrix product X[F_x, S] @ Y[S, F_y] (reshaped when S or F are blocks)."""
    terms = inputs.split(",")
    if len(terms) != 2:
        return None
    (x, xs), (y, ys) = zip(picked, terms, strict=True)
    summed = [c for c in xs if c in ys]
    if not summed or any(c in out_letters for c in summed):
        return None
    free_x, free_y = [c for c in xs if c not in summed], [c for c in ys if c not in summed]
    if out_letters == "".join(free_y + free_x):
        (x, xs, free_x), (y, ys, free_y) = (y, ys, free_y), (x, xs, free_x)
    if out_letters != "".join(free_x + free_y):
        return None
    block = "".join(c for c in xs if c in summed)
    if "".join(c for c in ys if c in summed) != block:  # the summed axes in another order:
        # permute the operand without the batch (the smaller) to the other's order
        if BATCH in y.indices and BATCH in x.indices:
            return None
        if BATCH in y.indices:
            x, xs = _permuted(x, xs, "".join(free_x) + "".join(c for c in ys if c in summed))
            block = "".join(c for c in xs if c in summed)
        else:
            ys_new = "".join(c for c in xs if c in summed) + "".join(free_y)
            y, ys = _permuted(y, ys, ys_new)

    def size(letters: str) -> list[str]:
        return block_size(letters, letter_index, shape_code)

    def matrix(op: Operand, letters: str, free: list, first: bool) -> str | None:
        f, s_ = "".join(free), block
        if letters == (f + s_ if first else s_ + f):
            transpose = ""
        elif letters == (s_ + f if first else f + s_):
            transpose = ".T"
        else:
            return None
        if len(letters) == 2:
            return f"{op.code}{transpose}"
        if not free:
            return None
        rows, cols = (f, s_) if letters.startswith(f) else (s_, f)
        return f"{op.code}.reshape({', '.join(size(rows) + size(cols))}){transpose}"

    left, right = matrix(x, xs, free_x, True), matrix(y, ys, free_y, False)
    if left is None or right is None or not free_x or not free_y:
        return None
    code = f"{left} @ {right}"
    if len(free_x) > 1 or len(free_y) > 1:
        dims = ", ".join(size(c)[0] for c in out_letters)
        code = f"({code}).reshape({dims})"
    return code


def _permuted(op: Operand, letters: str, order: str) -> tuple[Operand, str]:
    """op with its axes permuted from `letters` to `order`."""
    perm = ", ".join(str(letters.index(c)) for c in order)
    indices = tuple(op.indices[letters.index(c)] for c in order)
    return Operand(f"{op.code}.permute({perm})", indices), order


def _as_shared_matmul(picked: list[Operand], inputs: str, out_letters: str,
                      letter_index: dict) -> str | None:
    """A matrix applied to every sample's matrix, A[f, s] Y[n, s, g] -> [n, f, g] as
    `A @ Y` (torch transposes Y to fold it), where einsum runs N small GEMMs. A[s, f] is
    transposed first, Y[n, g, s] viewed transposed. (A[f, s] Y[n, g, s] -> [n, g, f] is
    `_as_matmul`'s: one GEMM over the folded batch.)"""
    terms = inputs.split(",")
    if len(terms) != 2:
        return None
    for (a, a_letters), (y, y_letters) in (tuple(zip(picked, terms, strict=True)),
                                           tuple(zip(picked, terms, strict=True))[::-1]):
        if len(a_letters) != 2 or len(y_letters) != 3 or BATCH in a.indices \
                or letter_index[y_letters[0]] != BATCH:
            continue
        batch = y_letters[0]
        summed = next((c for c in y_letters[1:] if c in a_letters), None)
        if summed is None or batch in a_letters:
            continue
        kept = y_letters[1:].replace(summed, "")
        free = a_letters.replace(summed, "")
        if kept in a_letters or out_letters != batch + free + kept:
            continue
        matrix = a.code if a_letters == free + summed else f"{a.code}.T"
        samples = y.code if y_letters[1] == summed else f"{y.code}.transpose(1, 2)"
        return f"{matrix} @ {samples}"
    return None


def _as_batched_matvec(picked: list[Operand], inputs: str, out_letters: str,
                       letter_index: dict) -> str | None:
    """Every sample's vector times its matrix, x[n, s] Y[n, s, g] -> [n, g] (or Y[n, g, s]
    x[n, s]), as one batched matrix product on views: einsum permutes and copies both
    operands to reach the same bmm."""
    terms = inputs.split(",")
    if len(terms) != 2:
        return None
    for (x, xs), (y, ys) in (tuple(zip(picked, terms, strict=True)),
                             tuple(zip(picked, terms, strict=True))[::-1]):
        if len(xs) != 2 or len(ys) != 3 or xs[0] != ys[0] or letter_index[xs[0]] != BATCH:
            continue
        batch, summed = xs[0], xs[1]
        if summed not in ys[1:]:
            continue
        kept = ys[1:].replace(summed, "")
        if out_letters != batch + kept:
            continue
        if ys[1] == summed:
            return f"({x.code}.unsqueeze(1) @ {y.code}).squeeze(1)"
        return f"({y.code} @ {x.code}.unsqueeze(2)).squeeze(2)"
    return None


def block_size(letters: str, letter_index: dict, shape_code: ShapeCode) -> list[str]:
    """One reshape dimension for a block of letters (their sizes multiplied); -1 for the
    block holding the batch, whose size the other dimensions determine."""
    if any(letter_index[c] == BATCH for c in letters):
        return ["-1"]
    parts = [shape_code(letter_index[c]) for c in letters]
    return [" * ".join(parts)] if parts else []


def _pretty_equation(inputs: str, out_letters: str, picked: list[Operand],
                     out_indices: tuple) -> str:
    """Rename einsum letters after the spec's index names where possible (n = batch)."""
    mapping: dict[str, str] = {}
    used: set[str] = set()
    pairs = []
    for op, letters in zip(picked, inputs.split(","), strict=True):
        pairs += list(zip(letters, op.indices, strict=True))
    pairs += list(zip(out_letters, out_indices, strict=True))
    for letter, index in pairs:
        if letter in mapping:
            continue
        wish = "n" if index == BATCH else str(index)
        if len(wish) != 1 or wish in used or not wish.isalpha():
            wish = next(c for c in "abcdefghijklmopqrstuvwxyz" if c not in used
                        and c not in {str(i) for _, i in pairs})
        mapping[letter] = wish
        used.add(wish)
    return ",".join("".join(mapping[c] for c in t) for t in inputs.split(",")) + "->" + \
        "".join(mapping[c] for c in out_letters)

