"""Hand-written closed-form exact score-matching losses for the seed models.

Each function returns the batch mean of sum_i 1/2 score_i^2 + d score_i / dx_i (constants
included), the quantity the generated `sm_loss` computes, from the generated module's own
parameters. They are written independently of the generated code, from the seeds' formulas,
as the best a person would write by hand; `bench/run.py` times them against the generated
code and the tests (`tests/test_torch_compile.py`) check them against it in float64.

Notation: x is [N, D]; s = sigmoid, s' = s (1 - s), s'' = s' (1 - 2 s).

Two tricks beat the direct forms:
- Gram form of the squared score. When score = B e - x / sigma^2 + b for a [D, R] matrix B
  and per-sample coefficients e [N, R] with R << D, |score|^2 expands into |x|^2, e . (B^T x)
  and e^T (B^T B) e: the [N, D] score is never formed, and B^T x is already computed.
- Reordered Laplacian (DEM): sum_i (sum_h A_h V_hi)^2 = A^T (V V^T) A, so the quadratic
  term costs N K H^2 rather than N K H D.
"""

from __future__ import annotations

import functools

import torch
from torch.nn.functional import softplus


def _gram_squared_score(x: torch.Tensor, b: torch.Tensor, inv: float, a: torch.Tensor,
                        b_proj: torch.Tensor, x_proj: torch.Tensor,
                        a_gram_a: torch.Tensor) -> torch.Tensor:
    """|b - x/sigma^2 + B a|^2 per row, expanded so the [N, D] score is never formed:
    |b|^2 + |x|^2/sigma^4 - 2 b.x/sigma^2 + 2 a.(B^T b) - 2 a.(B^T x)/sigma^2 + a^T G a,
    from b_proj = B^T b, x_proj = B^T x [N, R] and a_gram_a = a^T (B^T B) a [N]."""
    return ((b @ b) + inv * inv * (x * x).sum(1) - 2 * inv * (x @ b) + 2 * (a @ b_proj)
            - 2 * inv * (a * x_proj).sum(1) + a_gram_a)


def dem(x: torch.Tensor, V: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
        sigma: float, gram_score: bool = True, quadratic: str = "upper_pairs") -> torch.Tensor:
    """DEM (Ngiam et al. 2011): log p~ = -|x|^2/(2 sigma^2) + b.x + sum_k softplus(z_k),
    z = W g + c, g = sigmoid(V x).

    score = b - x/sigma^2 + A V with A = g' * (W^T s(z)); the Laplacian is
    -D/sigma^2 + sum_h |V_h|^2 g''_h (W^T s)_h + sum_k s'(z_k) (W_k * g')^T G (W_k * g'),
    G = V V^T [H, H]. Both the squared score and the Laplacian go through G only
    (gram_score=False forms the [N, D] score instead). The quadratic term
    sum_k s'_k sum_{h,h'} W_kh W_kh' G_hh' g'_h g'_h':
    - "upper_pairs" (the fewest FLOPs): symmetric in (h, h'), so one GEMM of
      (g'_h g'_h')[N, P] with (w_hh' W_kh W_kh' G_hh')[K, P] over the P = H (H + 1) / 2
      pairs h <= h' (w = 2 off the diagonal), half the work of the other forms, forward
      and backward; the pairs are gathered (index_select, an index_add backward);
    - "circulant": the same over the pairs (h, h + s mod H), s = 0 .. H / 2 (H (H / 2 + 1)
      entries, w = 1 for s = 0 and s = H / 2), each side formed from strided views of
      [g', g'[:H/2]] with no gather; autograd's own backward;
    - "pairwise": over every pair, (g' g'^T)[N, H*H] @ (W_kh W_kh' G_hh')[H*H, K];
    - "shared": B[n, k, h] = W_kh g'_nh, one [N K, H] x [H, H] GEMM (G broadcasts, so
      matmul folds the batch), then a row-wise dot.
    """
    n, d = x.shape
    inv = 1.0 / sigma**2
    u = x @ V.T                                    # [N, H]
    g = torch.sigmoid(u)
    s = torch.sigmoid(torch.addmm(c, g, W.T))      # [N, K]
    g1 = g * (1 - g)
    g2 = g1 * (1 - 2 * g)
    ws = s @ W                                     # [N, H]: W^T s
    a = g1 * ws                                    # [N, H]
    gram = V @ V.T                                 # [H, H]
    if gram_score:
        # |b - x/sigma^2 + a V|^2 = |b|^2 + |x|^2/sigma^4 - 2 b.x/sigma^2
        #                           + 2 a.(V b) - 2 a.u/sigma^2 + a G a^T
        squared = _gram_squared_score(x, b, inv, a, V @ b, u, ((a @ gram) * a).sum(1))
    else:
        score = b - x * inv + a @ V
        squared = (score * score).sum(1)
    if quadratic == "shared":
        B = g1.unsqueeze(1) * W                    # [N, K, H]
        quad = ((B @ gram) * B).sum(2)             # [N, K]
    elif quadratic == "circulant":
        h = V.shape[0]
        shift = torch.arange(h // 2 + 1, device=x.device).unsqueeze(1)
        weight = torch.where((shift == 0) | (2 * shift == h), 1.0, 2.0).to(x.dtype)
        diagonals = gram.gather(1, (torch.arange(h, device=x.device) + shift).T % h).T
        quad = _shifted_products(g1) @ (_shifted_products(W) * (diagonals * weight)
                                        .reshape(-1)).T
    else:
        pairs = (g1.unsqueeze(2) * g1.unsqueeze(1)).reshape(n, -1)              # [N, H*H]
        weights = (W.unsqueeze(2) * W.unsqueeze(1) * gram).reshape(W.shape[0], -1)  # [K, H*H]
        if quadratic == "upper_pairs":
            # picked by index_select (a gather whose backward is one index_add; advanced
            # indexing g1[:, first] * g1[:, second] measured twice as slow here)
            flat, weight = _upper_pairs(V.shape[0], x.device, x.dtype)
            pairs, weights = pairs.index_select(1, flat), weights.index_select(1, flat) * weight
        quad = pairs @ weights.T                   # [N, K]
    laplacian = (-d * inv + (g2 * ws) @ torch.diagonal(gram)
                 + (quad * (s * (1 - s))).sum(1))
    return (0.5 * squared + laplacian).mean()


def _shifted_products(rows: torch.Tensor) -> torch.Tensor:
    """rows[:, h] * rows[:, (h + s) % H] at [:, s * H + h], s = 0 .. H / 2: strided views
    of the rows wrapped around (the product written into a contiguous [R, S, H], whose
    own layout would follow the view's strides and cost a copy to flatten)."""
    h = rows.shape[1]
    windows = torch.cat([rows, rows[:, :h // 2]], 1).unfold(1, h, 1)
    return (rows.unsqueeze(1) * windows).contiguous().reshape(rows.shape[0], -1)


@functools.lru_cache(maxsize=8)
def _upper_pairs(h: int, device: torch.device, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices a * h + b of the pairs a <= b, and their weights (2 off the diagonal)."""
    first, second = torch.triu_indices(h, h, device=device)
    return first * h + second, torch.where(first == second, 1.0, 2.0).to(dtype)


def dem_chain(x: torch.Tensor, Vs: list[torch.Tensor], biases: list[torch.Tensor | None],
              W: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
              sigma: float) -> torch.Tensor:
    """A deep DEM: g_l = s(V_l g_(l-1) + a_l) with g_0 = x, log p~ = -|x|^2/(2 sigma^2)
    + b.x + sum_k softplus(W g_L + c)_k. Each sample's Jacobian is carried forward in the
    first layer's space, C_l = d u_l / d u_1 [N, H, H] (N H^3 per layer), its Laplacian
    as L_l = tr(G d^2 u_l / du_1^2) with G = V_1 V_1^T:
        C_(l+1) = V_(l+1) diag(g_l') C_l,
        L_(l+1) = V_(l+1) (g_l'' rowquad(C_l, G) + g_l' L_l),
    rowquad(C, G)[h] = C[h] G C[h]^T; the score is b - x/sigma^2 + V_1^T A with
    A = C_z^T s(z), squared in its Gram form."""
    d = x.shape[1]
    inv = 1.0 / sigma**2
    V1, a1 = Vs[0], biases[0]
    gram = V1 @ V1.T
    xv = x @ V1.T                                   # V_1 x, reused by the squared score
    u = xv if a1 is None else xv + a1
    g = torch.sigmoid(u)
    g1 = g * (1 - g)
    jac = None                                      # C of g_1 is diag(g'): kept implicit
    lap = g1 * (1 - 2 * g) * torch.diagonal(gram)   # L of g_1
    for V, a in zip(Vs[1:], biases[1:], strict=True):
        u = g @ V.T if a is None else torch.addmm(a, g, V.T)
        jac_u = V * g1.unsqueeze(1) if jac is None else V @ jac        # [N, H, H]
        lap_u = lap @ V.T
        g = torch.sigmoid(u)
        g1 = g * (1 - g)
        quad = ((jac_u @ gram) * jac_u).sum(2)
        lap = g1 * (1 - 2 * g) * quad + g1 * lap_u
        jac = g1.unsqueeze(2) * jac_u
    s = torch.sigmoid(torch.addmm(c, g, W.T))
    jac_z = W * g1.unsqueeze(1) if jac is None else W @ jac            # [N, K, H]
    lap_z = lap @ W.T
    quad_z = ((jac_z @ gram) * jac_z).sum(2)
    A = (s.unsqueeze(1) @ jac_z).squeeze(1)                            # [N, H]
    squared = _gram_squared_score(x, b, inv, A, V1 @ b, xv, ((A @ gram) * A).sum(1))
    laplacian = -d * inv + (s * lap_z).sum(1) + (s * (1 - s) * quad_z).sum(1)
    return (0.5 * squared + laplacian).mean()


def dem_row_space(x: torch.Tensor, Vs: list[torch.Tensor], biases: list[torch.Tensor | None],
                  W: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                  sigma: float) -> torch.Tensor:
    """The deep DEM of `dem_chain` with its Jacobians carried in the orthonormal
    coordinates y = Q^T x of V_1's row space (V_1 V_1^T = R^T R by Cholesky, Q = V_1^T R^-1,
    never formed): there u_1 = R^T y + a_1, the Laplacian in x is the plain Laplacian in
    y, and each layer's quadratic form is a sum of squares, so a layer costs one N H^3
    product (J @ V^T) instead of two. Jacobians are [N, a, h] (y index first), so every
    product folds the batch into one GEMM:
        J_(l+1) = (J_l diag(g_l')) V_(l+1)^T,
        L_(l+1) = (g_l'' sum_a J_l^2 + g_l' L_l) V_(l+1)^T,
    score = b - x / sigma^2 + Q A with A = J_z s(z), |Q A|^2 = |A|^2."""
    d = x.shape[1]
    inv = 1.0 / sigma**2
    V1, a1 = Vs[0], biases[0]
    R = torch.linalg.cholesky(V1 @ V1.T).T            # [H, H], R^T R = V1 V1^T
    projected = x @ V1.T                              # [N, H]
    g = torch.sigmoid(projected if a1 is None else projected + a1)
    g1 = g * (1 - g)
    jac = R * g1.unsqueeze(1)                         # d g_1[h] / dy[a] = R[a, h] g'_h
    lap = g1 * (1 - 2 * g) * (R * R).sum(0)
    for V, a in zip(Vs[1:], biases[1:], strict=True):
        u = g @ V.T if a is None else torch.addmm(a, g, V.T)
        jac_u = jac @ V.T                             # [N, H, H]: one folded GEMM
        lap_u = lap @ V.T
        g = torch.sigmoid(u)
        g1 = g * (1 - g)
        lap = g1 * (1 - 2 * g) * jac_u.square().sum(1) + g1 * lap_u
        jac = jac_u * g1.unsqueeze(1)
    s = torch.sigmoid(torch.addmm(c, g, W.T))
    jac_z = jac @ W.T                                 # [N, H, K]
    lap_z = lap @ W.T
    A = (jac_z @ s.unsqueeze(2)).squeeze(2)           # [N, H]: d sum softplus(z) / dy
    # Q^T b = R^-T V1 b and x Q = (x V1^T) R^-1: two triangular solves, not Q
    b_proj = torch.linalg.solve_triangular(R.T, (V1 @ b).unsqueeze(1), upper=False).squeeze(1)
    x_proj = torch.linalg.solve_triangular(R, projected, upper=True, left=False)
    squared = _gram_squared_score(x, b, inv, A, b_proj, x_proj, A.square().sum(1))
    laplacian = (-d * inv + (s * lap_z).sum(1)
                 + (s * (1 - s) * jac_z.square().sum(1)).sum(1))
    return (0.5 * squared + laplacian).mean()


class _AdjointSquares(torch.autograd.Function):
    """Q_n = sum_l sum_h c_l[n, h] |T_l[n, :, h]|^2 over a sigmoid chain's layers, with
    T_2 = (R * d_1) M_2^T, T_(l+1) = (T_l * d_l) M_(l+1)^T (d_l = g_l', M the weights,
    the last M the output layer's). The gradients are formed in the forward pass, a block
    of samples at a time, so that each block's [n, H, H] matrices stay in cache between
    the forward and the reverse sweep; backward only scales them. Exact for a batch-mean
    (uniform) upstream gradient, which it checks."""

    @staticmethod
    def forward(ctx, block: int, layers: int, R: torch.Tensor, *rest: torch.Tensor):
        ds, Ms, cs = rest[:layers], rest[layers:2 * layers], rest[2 * layers:]
        n_all, a = ds[0].shape[0], R.shape[0]
        total = ds[0].new_zeros(n_all)
        grad_R = torch.zeros_like(R)
        grad_M = [torch.zeros_like(M) for M in Ms]
        grad_d = [torch.empty_like(d) for d in ds]
        grad_c = [torch.empty_like(c) for c in cs]
        for lo in range(0, n_all, block):
            rows = slice(lo, lo + block)
            n = min(n_all, lo + block) - lo
            J = R * ds[0][rows, None, :]
            Js, Ts = [J], []
            for layer, M in enumerate(Ms):
                T = (J.reshape(-1, J.shape[2]) @ M.T).reshape(n, a, M.shape[0])
                squares = (T * T).sum(1)
                grad_c[layer][rows] = squares
                total[rows] += (cs[layer][rows] * squares).sum(1)
                Ts.append(T)
                if layer + 1 < layers:
                    J = T * ds[layer + 1][rows, None, :]
                    Js.append(J)
            adj_J = None
            for layer in range(layers - 1, -1, -1):
                T = Ts[layer]
                adj_T = T * (2 * cs[layer][rows, None, :])
                if adj_J is not None:
                    grad_d[layer + 1][rows] = (adj_J * T).sum(1)
                    adj_T.addcmul_(adj_J, ds[layer + 1][rows, None, :])
                J = Js[layer]
                flat = adj_T.reshape(-1, adj_T.shape[2])
                grad_M[layer].addmm_(flat.T, J.reshape(-1, J.shape[2]))
                adj_J = (flat @ Ms[layer]).reshape(n, a, J.shape[2])
            grad_d[0][rows] = (adj_J * R).sum(1)
            grad_R += (adj_J * ds[0][rows, None, :]).sum(0)
        ctx.save_for_backward(grad_R, *grad_M, *grad_d, *grad_c)
        ctx.layers = layers
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        if not bool((grad == grad[0]).all()):
            raise NotImplementedError("_AdjointSquares: a non-uniform upstream gradient")
        layers, saved = ctx.layers, ctx.saved_tensors
        grad_R, grad_M = saved[0], saved[1:1 + layers]
        grad_d, grad_c = saved[1 + layers:1 + 2 * layers], saved[1 + 2 * layers:]
        column = grad[:, None]
        return (None, None, grad_R * grad[0], *(g * column for g in grad_d),
                *(g * grad[0] for g in grad_M), *(g * column for g in grad_c))


def dem_adjoint_blocked(x: torch.Tensor, Vs: list[torch.Tensor],
                        biases: list[torch.Tensor | None], W: torch.Tensor, b: torch.Tensor,
                        c: torch.Tensor, sigma: float, block: int = 32) -> torch.Tensor:
    """The deep DEM with the Laplacian in its reverse form: with adj_l = d sum softplus(z)
    / d g_l (the score's own reverse sweep),
        Laplacian = -D / sigma^2 + sum_l <adj_l g_l'', |grad u_l|^2> + <s'(z), |grad z|^2>,
    where |grad u_l[h]|^2 are the squared columns of the row-space Jacobians of
    `dem_row_space`. Their weights are known in the forward pass, so `_AdjointSquares`
    runs each block of samples' forward and reverse sweep together, in cache."""
    d = x.shape[1]
    inv = 1.0 / sigma**2
    V1 = Vs[0]
    R = torch.linalg.cholesky(V1 @ V1.T).T
    projected = x @ V1.T
    g, slopes, curvatures = None, [], []
    for layer, (V, a) in enumerate(zip(Vs, biases, strict=True)):
        u = projected if layer == 0 else g @ V.T
        g = torch.sigmoid(u if a is None else u + a)
        slopes.append(g * (1 - g))
        curvatures.append(slopes[-1] * (1 - 2 * g))
    s = torch.sigmoid(torch.addmm(c, g, W.T))
    adjoints = [s @ W]                                # d sum softplus(z) / d g_L, then down
    for layer in range(len(Vs) - 1, 0, -1):
        adjoints.insert(0, (adjoints[0] * slopes[layer]) @ Vs[layer])
    adj_u1 = adjoints[0] * slopes[0]                  # d sum softplus(z) / d u_1
    weights = [adj * curv for adj, curv in zip(adjoints[1:], curvatures[1:], strict=True)]
    chain = _AdjointSquares.apply(block, len(Vs), R, *slopes, *Vs[1:], W, *weights,
                                  s * (1 - s))
    first = (adjoints[0] * curvatures[0]) @ (R * R).sum(0)
    squared = _gram_squared_score(x, b, inv, adj_u1, V1 @ b, projected,
                                  (adj_u1 @ R.T).square().sum(1))
    return (0.5 * squared - d * inv + first + chain).mean()


def dem_naive(x: torch.Tensor, V: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
              c: torch.Tensor, sigma: float) -> torch.Tensor:
    """DEM, the direct closed form: builds J[n, k, i] = sum_h W_kh g'_nh V_hi (the Jacobian
    of z with respect to x, N x K x D) and squares it, as one first writes it."""
    d = x.shape[1]
    inv = 1.0 / sigma**2
    g = torch.sigmoid(x @ V.T)
    s = torch.sigmoid(g @ W.T + c)
    g1 = g * (1 - g)
    g2 = g1 * (1 - 2 * g)
    jac = torch.einsum("kh,nh,hi->nki", W, g1, V)            # [N, K, D]
    score = b - x * inv + torch.einsum("nk,nki->ni", s, jac)
    hess_z = torch.einsum("kh,nh,hi->nki", W, g2, V * V)     # d^2 z_k / dx_i^2
    laplacian = (-d * inv + torch.einsum("nk,nki->n", s, hess_z)
                 + torch.einsum("nk,nki->n", s * (1 - s), jac * jac))
    return (0.5 * (score * score).sum(1) + laplacian).mean()


def gbrbm(v: torch.Tensor, W: torch.Tensor, gram_score: bool = True) -> torch.Tensor:
    """Gaussian-Bernoulli RBM: F = 1/2 |v|^2 - sum_j softplus(W_j . v).
    score = W s(a) - v, a = W^T v; |score|^2 = |v|^2 - 2 a.s + s^T (W^T W) s;
    Laplacian = -D + sum_j s'(a_j) |W_j|^2 (gram_score=False: the [N, D] score)."""
    d = v.shape[1]
    a = v @ W                                      # [N, K]
    s = torch.sigmoid(a)
    if gram_score:
        gram = W.T @ W                             # [K, K]
        squared = (v * v).sum(1) - 2 * (a * s).sum(1) + ((s @ gram) * s).sum(1)
        norms = torch.diagonal(gram)
    else:
        score = s @ W.T - v
        squared = (score * score).sum(1)
        norms = (W * W).sum(0)
    laplacian = -d + (s * (1 - s)) @ norms
    return (0.5 * squared + laplacian).mean()


def gaussian_rbm(v: torch.Tensor, W: torch.Tensor, gram_score: bool = True) -> torch.Tensor:
    """RBM with Gaussian visible and hidden units: F = 1/2 v^T (I - W W^T) v + const.
    score = W a - v, a = W^T v; |score|^2 = |v|^2 - 2 |a|^2 + a^T (W^T W) a;
    Laplacian = -D + |W|_F^2, a constant (gram_score=False: the [N, D] score)."""
    d = v.shape[1]
    a = v @ W
    if not gram_score:
        score = a @ W.T - v
        return 0.5 * (score * score).sum(1).mean() - d + (W * W).sum()
    gram = W.T @ W
    squared = (v * v).sum(1) - 2 * (a * a).sum(1) + ((a @ gram) * a).sum(1)
    return 0.5 * squared.mean() - d + torch.trace(gram)


def mpot(v: torch.Tensor, C: torch.Tensor, W: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean-product of Student-t: F = gamma sum_k log(1 + phi_k^2/2) - sum_j softplus(t_j)
    + 1/2 |v|^2, phi = C^T v, t = W^T v.
    score = W s(t) - gamma C psi(phi) - v, psi(p) = p / (1 + p^2/2), psi' = (1 - p^2/2) /
    (1 + p^2/2)^2; Laplacian = -D + sum_j s'(t_j)|W_j|^2 - gamma sum_k psi'(phi_k)|C_k|^2.
    C and W are used as one [D, K+M] matrix so each product is one GEMM."""
    d = v.shape[1]
    k = C.shape[1]
    B = torch.cat([C, W], dim=1)                   # [D, K+M]
    a = v @ B
    phi, t = a[:, :k], a[:, k:]
    q = 1 / (1 + 0.5 * phi * phi)
    s = torch.sigmoid(t)
    e = torch.cat([-gamma * phi * q, s], dim=1)   # score = B e - v
    score = e @ B.T - v
    norms = (B * B).sum(0)
    curv = torch.cat([-gamma * (1 - 0.5 * phi * phi) * q * q, s * (1 - s)], dim=1)
    laplacian = -d + curv @ norms
    return (0.5 * (score * score).sum(1) + laplacian).mean()


@functools.lru_cache(maxsize=16)
def _stencil(height: int, width: int, connectivity: int, device: str) -> tuple:
    """Masks over each pixel's 3 x 3 window ([3, 3, h, w]: window offset first): the
    off-diagonal neighbours (inside the image and in the 4- or 8-neighbourhood) and the
    centre; and for the dense form, the flat index of (p, q) in a [D, D] matrix."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    dr = torch.arange(-1, 2, device=device).view(3, 1, 1, 1)
    dc = torch.arange(-1, 2, device=device).view(1, 3, 1, 1)
    row = torch.arange(height, device=device).view(1, 1, height, 1)
    col = torch.arange(width, device=device).view(1, 1, 1, width)
    q_row, q_col = row + dr, col + dc
    inside = (q_row >= 0) & (q_row < height) & (q_col >= 0) & (q_col < width)
    near = (dr.abs() + dc.abs() <= 1) if connectivity == 4 else torch.ones_like(inside)
    centre = ((dr == 0) & (dc == 0)).expand(3, 3, height, width)
    pq = (row * width + col) * (height * width) + q_row * width + q_col
    return inside & near & ~centre, centre, inside, pq


def _symmetric_window(raw: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(raw + raw^T) / 2 on each pixel's window, from the stored stencil raw [9, D] (row
    3 a + b holds raw[p, p + (a - 1, b - 1)]): raw^T[p, p + o] = raw[p + o, p] is the
    opposite offset's entry at the neighbour, a shift of the zero-padded image."""
    window = raw.view(3, 3, height, width)
    padded = torch.nn.functional.pad(window.flip(0, 1), (1, 1, 1, 1))
    transpose = torch.stack([torch.stack([padded[a, b, a:a + height, b:b + width]
                                          for b in range(3)]) for a in range(3)])
    return 0.5 * (window + transpose)


def masked_gaussian(x: torch.Tensor, mu: torch.Tensor, raw: torch.Tensor, height: int,
                    width: int, connectivity: int = 8) -> torch.Tensor:
    """Gaussian with a grid-masked precision, by its 3 x 3 stencil: F = 1/2 y^T Lambda y,
    y = x - mu, Lambda = S (symmetrised raw, masked to the grid neighbourhood, zero diagonal)
    plus the diagonal sum_q |S_pq| + softplus(raw_pp) + 1e-6. score = -Lambda y costs 9 N D
    (one shifted product per neighbour) instead of the dense N D^2; loss = 1/2 |Lambda y|^2 - tr.
    raw is the module's stored [9, D] stencil.
    """
    n = x.shape[0]
    off, centre, _, _ = _stencil(height, width, connectivity, str(x.device))
    S = torch.where(off, _symmetric_window(raw, height, width), torch.zeros((), dtype=x.dtype))
    diagonal = S.abs().sum((0, 1)) + softplus(raw.view(3, 3, height, width)[1, 1]) + 1e-6
    kernel = torch.where(centre, diagonal, S)                # Lambda[p, p + (a-1, b-1)]

    def apply(image: torch.Tensor) -> torch.Tensor:       # Lambda image, image [..., h, w]
        padded = torch.nn.functional.pad(image, (1, 1, 1, 1))
        out = kernel[1, 1] * image
        for a in range(3):
            for b in range(3):
                if (a, b) != (1, 1) and (connectivity == 8 or a == 1 or b == 1):
                    out = out + kernel[a, b] * padded[..., a:a + height, b:b + width]
        return out

    # Lambda (x - mu) = Lambda x - Lambda mu: the data x needs no gradient, so the shifted
    # copies of the batch are never differentiated; only mu's [h, w] image is.
    out = apply(x.view(n, height, width)) - apply(mu.view(height, width))
    return 0.5 * (out * out).sum((1, 2)).mean() - diagonal.sum()


def masked_gaussian_dense(x: torch.Tensor, mu: torch.Tensor, raw: torch.Tensor, height: int,
                          width: int, connectivity: int = 8) -> torch.Tensor:
    """The same loss with the dense [D, D] precision (what a direct transcription does):
    the stored stencil scattered into a dense raw matrix first."""
    d = height * width
    _, _, inside, pq = _stencil(height, width, connectivity, str(x.device))
    window = raw.view(3, 3, height, width)
    dense = torch.zeros(d * d, dtype=x.dtype).index_put((pq[inside],), window[inside])
    dense = dense.view(d, d)
    pixel = torch.arange(d, device=x.device)
    row, col = pixel // width, pixel % width
    dr = (row[:, None] - row[None, :]).abs()
    dc = (col[:, None] - col[None, :]).abs()
    mask = (dr + dc <= 1) if connectivity == 4 else (dr <= 1) & (dc <= 1)
    mask = mask & ~torch.eye(d, dtype=torch.bool, device=x.device)
    off = torch.where(mask, 0.5 * (dense + dense.T), torch.zeros_like(dense))
    diagonal = off.abs().sum(1) + softplus(torch.diagonal(dense)) + 1e-6
    y = x - mu
    score = -(y @ off + diagonal * y)
    return 0.5 * (score * score).sum(1).mean() - diagonal.sum()


SCORE_FORMED = "hand, [N, D] score formed"
CHAIN_IN_U = "hand, Jacobians in the first layer's space, closed with V1 V1^T"
ADJOINT_BLOCKED = "hand, Laplacian by adjoints, forward and reverse per block of 32"

# The forms bench/run.py times, by generated class name: name -> f(model, x); "hand" is the
# best, the others show what each trick is worth.
HAND = {
    "DEM": {
        "hand": lambda m, x: dem(x, m.V, m.W, m.b, m.c, m.sigma),
        "hand, circulant pairs (h, h + s mod H) from strided views":
            lambda m, x: dem(x, m.V, m.W, m.b, m.c, m.sigma, quadratic="circulant"),
        "hand, [N K, H] x [H, H] quadratic form (all pairs)":
            lambda m, x: dem(x, m.V, m.W, m.b, m.c, m.sigma, quadratic="shared"),
        SCORE_FORMED: lambda m, x: dem(x, m.V, m.W, m.b, m.c, m.sigma, gram_score=False,
                                       quadratic="shared"),
        "hand, generated's order ([N, D] score, pairwise (h, h') GEMM)":
            lambda m, x: dem(x, m.V, m.W, m.b, m.c, m.sigma, gram_score=False,
                             quadratic="pairwise"),
        "hand, naive (N x K x D Jacobian)": lambda m, x: dem_naive(x, m.V, m.W, m.b, m.c,
                                                                   m.sigma),
    },
    "DEM3": {
        "hand": lambda m, x: dem_row_space(x, [m.V1, m.V2, m.V3], [None] * 3, m.W, m.b,
                                           m.c, m.sigma),
        CHAIN_IN_U: lambda m, x: dem_chain(x, [m.V1, m.V2, m.V3], [None] * 3, m.W, m.b,
                                           m.c, m.sigma),
        ADJOINT_BLOCKED: lambda m, x: dem_adjoint_blocked(
            x, [m.V1, m.V2, m.V3], [None] * 3, m.W, m.b, m.c, m.sigma),
    },
    "DEM5": {
        "hand": lambda m, x: dem_row_space(x, [m.V1, m.V2, m.V3, m.V4, m.V5],
                                           [m.a1, m.a2, m.a3, m.a4, m.a5], m.W, m.b, m.c,
                                           m.sigma),
        CHAIN_IN_U: lambda m, x: dem_chain(x, [m.V1, m.V2, m.V3, m.V4, m.V5],
                                           [m.a1, m.a2, m.a3, m.a4, m.a5], m.W, m.b, m.c,
                                           m.sigma),
        ADJOINT_BLOCKED: lambda m, x: dem_adjoint_blocked(
            x, [m.V1, m.V2, m.V3, m.V4, m.V5], [m.a1, m.a2, m.a3, m.a4, m.a5], m.W, m.b,
            m.c, m.sigma),
    },
    "GBRBM": {
        "hand": lambda m, x: gbrbm(x, m.W),
        SCORE_FORMED: lambda m, x: gbrbm(x, m.W, gram_score=False),
    },
    "GaussianRBM": {
        "hand": lambda m, x: gaussian_rbm(x, m.W),
        SCORE_FORMED: lambda m, x: gaussian_rbm(x, m.W, gram_score=False),
    },
    "MPoT": {"hand": lambda m, x: mpot(x, m.C, m.W, m.gamma)},
    "MaskedGaussian": {
        "hand": lambda m, x: masked_gaussian(x, m.mu, m.Lambda, m.height, m.width,
                                             m.connectivity),
        "hand, dense precision": lambda m, x: masked_gaussian_dense(
            x, m.mu, m.Lambda, m.height, m.width, m.connectivity),
    },
}
