"""Weighted, penalised, guarded linear least squares by QR.

Solves ``min_c Σ_i w_i (z_i - (B c)_i)² + μ ||D c||² + ε ||c||²`` over the active
coefficients (inactive ones are exactly 0) by a QR factorisation of the stacked
matrix ``[√w B; √μ D; √ε I]``. QR works on the matrix itself, so its accuracy
depends on ``cond(A)``, not on ``cond(AᵀA) = cond(A)²`` as the normal equations
would; the ``ε`` rows make the problem full-rank whatever the data (a grid whose
valid cells do not determine every term, or masked terms).

The rows below ``√w B`` enter only through their Gram matrix, so when every term
is active and ``D`` is known at trace time (a NumPy array, as `match` builds it),
``[√μ D; √ε I]`` (``p + k`` rows) is replaced by the ``k`` rows
``diag(√(μ λ + ε)) Vᵀ`` with ``DᵀD = V diag(λ) Vᵀ`` (a NumPy ``eigh`` at trace
time): the same problem, a smaller QR (16 × 16 spline knots: 512 rows, not 960).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, Bool, Float


def solve_least_squares(
    design: Float[Array, "m k"],
    values: Float[Array, " m"],
    sqrt_weights: Float[Array, " m"],
    penalty: Float[Array | np.ndarray, "p k"],
    sqrt_mu: Float[Array, ""],
    active: Bool[Array | np.ndarray, " k"],
    sqrt_eps: Float[Array, ""],
    *,
    with_covariance: bool = False,
):
    """The minimiser ``c`` (k,) of the problem in the module docstring.

    Rows with ``sqrt_weights == 0`` drop out; ``values`` there must be finite
    (use 0). Inactive columns get coefficient 0 (their column is zeroed and a
    unit row pins them). ``penalty`` and ``active`` as NumPy arrays, all active,
    select the smaller equivalent QR of the module docstring.

    With ``with_covariance``, returns ``(c, Σ)`` where ``Σ = (AᵀA)⁻¹ = R⁻¹R⁻ᵀ`` on
    the active terms (0 elsewhere), from the same factorisation: the coefficient
    covariance when ``w`` are inverse variances (with a penalty, the posterior
    covariance). One QR serves both: two LAPACK calls side by side in one XLA CPU
    program can deadlock.
    """
    k = design.shape[1]
    a, act = _stacked(design, sqrt_weights, penalty, sqrt_mu, active, sqrt_eps)
    b = jnp.concatenate(
        [sqrt_weights * values, jnp.zeros(a.shape[0] - values.shape[0], dtype=design.dtype)]
    )
    # R of [A | b] holds R of A and Qᵀb (its last column): Q is never formed, which
    # halves the cost of the factorisation.
    # The extra row [0 … 0 | 1] changes only R_aug[k, k] = √(‖residual‖² + 1): never 0,
    # so the QR's derivative (which divides by R's diagonal) stays finite for an
    # exact fit (constant or identical exposures) or an all-masked grid.
    aug = jnp.concatenate([a, b[:, None]], axis=1)
    aug = jnp.concatenate([aug, jnp.zeros((1, k + 1), design.dtype).at[0, k].set(1)])
    r_aug = jnp.linalg.qr(aug, mode="r")
    r, qtb = r_aug[:k, :k], r_aug[:k, k]
    if not with_covariance:
        return jsl.solve_triangular(r, qtb, lower=False) * act
    r_inv = jsl.solve_triangular(r, jnp.eye(k, dtype=design.dtype), lower=False)
    coef = (r_inv @ qtb) * act
    return coef, (r_inv @ r_inv.T) * act[:, None] * act[None, :]


def _stacked(design, sqrt_weights, penalty, sqrt_mu, active, sqrt_eps):
    """``[√w B; √μ D; √ε I]`` on the active columns (a unit row pins each inactive
    one to 0), and the active mask as floats."""
    k = design.shape[1]
    if isinstance(active, np.ndarray) and active.all() and isinstance(penalty, np.ndarray):
        lam, vecs = np.linalg.eigh(penalty.T.astype(np.float64) @ penalty.astype(np.float64))
        lam = jnp.asarray(np.maximum(lam, 0.0), design.dtype)
        scale = jnp.sqrt(sqrt_mu * sqrt_mu * lam + sqrt_eps * sqrt_eps)
        regulariser = scale[:, None] * jnp.asarray(vecs.T, design.dtype)
        a = jnp.concatenate([sqrt_weights[:, None] * design, regulariser])
        return a, jnp.ones(k, design.dtype)
    act = active.astype(design.dtype)
    ridge = jnp.eye(k, dtype=design.dtype) * (sqrt_eps * act + (1 - act))[:, None]
    a = jnp.concatenate(
        [sqrt_weights[:, None] * design * act[None, :], sqrt_mu * penalty * act[None, :], ridge]
    )
    return a, act


# -- shared constants of every solve ------------------------------------------------

#: ε = RIDGE_PER_CELL · (valid cells): the rank guard of every solve (single and
#: global; docs/algorithm.md §6). Entered as rows ``√ε I`` of the stacked matrix,
#: never added to a normal matrix, so it acts in float32 as in float64.
RIDGE_PER_CELL = 1e-10

#: A solve is flagged ``ILL_CONDITIONED`` when its estimated rounding error exceeds
#: this fraction of the coefficients' statistical 1σ (docs/algorithm.md §6).
ROUNDOFF_LIMIT = 0.05

#: The status message of ``ILL_CONDITIONED`` (code 5, in `jaxmatch.STATUS_MESSAGES`).
ILL_CONDITIONED_MESSAGE = (
    "fitted and applied, but the solve's rounding error at this precision exceeds "
    f"{ROUNDOFF_LIMIT} of the model's statistical 1 sigma: use dtype='float64' "
    "(jax_enable_x64), a lower order or a larger binSize"
)

#: Steps of iterative refinement of the global solve on the original residual.
REFINEMENT_STEPS = 2


def working_eps(dtype) -> float:
    """Unit roundoff of the working dtype (float32: 6e-8, float64: 1.1e-16)."""
    return float(jnp.finfo(dtype).eps) / 2


def regulariser_rows(
    penalty: Float[Array, "p k"],
    sqrt_mu: Float[Array, ""],
    sqrt_eps: Float[Array, ""],
    act: Float[Array, " k"],
) -> Float[Array, "p+k k"]:
    """``L = [√μ D; √ε I]`` on the active columns, a unit row pinning each inactive
    term: the regulariser ``|L c|² = μ|D c|² + ε|c|²`` as rows of a stacked matrix."""
    k = act.shape[0]
    dtype = act.dtype
    ridge = jnp.eye(k, dtype=dtype) * (sqrt_eps * act + (1 - act))[:, None]
    return jnp.concatenate([sqrt_mu * jnp.asarray(penalty, dtype) * act[None, :], ridge])


def roundoff_ratio(
    design: Float[Array, "m k"],
    sqrt_weights: Float[Array, " m"],
    penalty: Float[Array | np.ndarray, "p k"],
    sqrt_mu: Float[Array, ""],
    sqrt_eps: Float[Array, ""],
    coefficients: Float[Array, " k"],
    sigma_u: Float[Array, ""],
) -> Float[Array, ""]:
    """Estimated rounding error of a QR least-squares solve, in units of its 1σ.

    A backward-stable QR solve of ``min |A c - b|`` returns the exact solution of a
    problem with ``A`` perturbed by ``δA``, ``|δA| ≈ u |A|`` (``u`` the unit
    roundoff). In the whitened coordinates ``v = R c``, whose statistical
    covariance is ``σ_u² I``, the error is ``δv ≈ δA c``, so

        ρ = u · |A|_F · |c|₂ / σ_u

    (``|A|_F² = Σ w |B_m|² + μ |D|_F² + ε k``, no factorisation needed). ``ρ`` is
    large when the coefficients cancel each other (a high order over a small
    footprint) or the signal-to-noise ratio exceeds what the dtype resolves; a
    result with ``ρ >`` `ROUNDOFF_LIMIT` is not trustworthy at this precision.
    """
    dtype = design.dtype
    design, sqrt_weights, coefficients, sigma_u = jax.lax.stop_gradient(
        (design, sqrt_weights, coefficients, sigma_u)
    )  # a status check: no gradient
    a2 = (
        jnp.sum(sqrt_weights[:, None] ** 2 * design**2)
        + sqrt_mu**2 * float(np.sum(np.asarray(penalty, np.float64) ** 2))
        + sqrt_eps**2 * design.shape[1]
    )
    u = working_eps(dtype)
    return u * jnp.sqrt(a2) * jnp.sqrt(jnp.sum(coefficients**2)) / sigma_u


# -- the global (pairwise) block solve ----------------------------------------------


def solve_pair_blocks(
    design: Float[Array, "m k"],
    weights: Float[Array, "P m"],
    values: Float[Array, "P m"],
    pairs: np.ndarray,
    regulariser: Float[Array, "N r k"],
    active: Float[Array, "N k"],
    pinned: np.ndarray,
    *,
    with_covariance: bool = False,
    refinement_steps: int = REFINEMENT_STEPS,
    mix: np.ndarray | None = None,
) -> dict:
    """``min_c Σ_p Σ_m w_pm (z_pm - B_m (c_j - c_i))² + Σ_i |L_i c_i|²`` with the
    coefficients of the ``pinned`` exposures fixed to 0 (the gauge).

    Shapes: ``design`` ``B`` (M, K); ``weights``/``values`` (P, M) per pair
    ``(i, j) = pairs[p]`` (static NumPy); ``regulariser`` ``L_i`` (N, R, K) (see
    `regulariser_rows`); ``active`` (N, K) 0/1; ``pinned`` (N,) static bool.

    Conditioning (docs/algorithm.md §13). The normal matrix of the raw basis is
    never formed. Each exposure's diagonal block ``A_ii = Bᵀ diag(Σ_{p∋i} w_p) B +
    L_iᵀL_i`` has the square root ``S_i = [√(Σ_{p∋i} w_p) B; L_i]``; the QR
    ``S_i = Q_i R_i`` (accuracy ``cond(S_i)``, not its square) gives the whitened
    coordinates ``d_i = R_i c_i``, in which every diagonal block is exactly ``I``
    and the off-diagonal blocks ``-V_iᵀ diag(w_p) V_j`` (``V_i = B R_i⁻¹``, columns
    orthonormal in the ``Σ w``-weighted inner product) are products of
    well-scaled matrices. The block matrix left, ``A_d`` (N·K)², has the
    conditioning of the overlap graph alone (how well overlaps tie exposures to the
    gauge), not that of the basis. It is never formed either: each pair's rows
    ``[-√w_p V_i | √w_p V_j]`` are compressed to 2K rows by a QR, stacked with the
    whitened regularisers ``L_i R_i⁻¹``, and one QR of that stack gives ``R_d``
    (``R_dᵀR_d = A_d``) and ``d``: accuracy ``cond(A_d)^½``. The gauge exposures
    are eliminated (their columns removed, ``d = 0``), so no Lagrange multipliers
    and no indefinite matrix. ``refinement_steps`` steps of iterative refinement
    (corrected semi-normal equations with ``R_d``) on the original residual
    ``z - B(c_j - c_i)`` then remove what the inexact whitening left.

    ``mix`` (N, N) (static, optional): return ``c'_i = Σ_j mix_ij c_j`` and its
    covariance instead (e.g. a gauge that subtracts each group's mean).

    Returns a dict: ``coef`` (N, K) (0 on pinned and inactive terms); ``cov``
    (N, K, K) ``= R_i⁻¹ [A_d⁻¹]_ii R_i⁻ᵀ`` (covariance in the units of ``1/w``;
    NaN unless ``with_covariance``); ``correction`` (N,) ``δ_iᵀ(A_d δ)_i`` of the
    last refinement step ``δ`` (summed over a connected group: ``‖δ‖²_A``, the
    squared size of the remaining rounding error in units of one unit of
    weight's variance); ``whitened_norm`` (N,) ``|d_i|``; ``graph_condition``
    the estimate ``(max |r_ii| / min |r_ii|)²`` of ``cond(A_d)``.
    """
    dtype = design.dtype
    n, _, k = regulariser.shape
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    pi, pj = pairs[:, 0], pairs[:, 1]
    free = jnp.asarray(~np.asarray(pinned, bool), dtype)  # (N,)
    b_act = design[None, :, :] * active[:, None, :]  # (N, M, K)

    # Per-exposure whitening: R_i of S_i = [√(Σ w) B; L_i].
    w_sum = jnp.zeros((n, weights.shape[1]), dtype).at[pi].add(weights).at[pj].add(weights)
    root = _safe_sqrt(w_sum)
    s = jnp.concatenate([root[:, :, None] * b_act, regulariser], axis=1)
    # V_i = B R_i⁻¹ and L_i R_i⁻¹ are read off Q_i (orthonormal to rounding whatever
    # cond(S_i)), not computed through R_i⁻¹: the whitened system stays exact.
    q, r = jax.vmap(lambda a: jnp.linalg.qr(a, mode="reduced"))(s)
    m = weights.shape[1]
    v = jnp.where(root[:, :, None] > 0, q[:, :m] / jnp.where(root > 0, root, 1)[:, :, None], 0)
    g = q[:, m:]  # L_i R_i⁻¹
    eye = jnp.eye(k, dtype=dtype)

    def from_whitened(d):
        """``c_i = R_i⁻¹ d_i`` (N, K) or (N, K, X), by triangular solves (backward
        stable; LAPACK calls one after the other, never side by side)."""
        c = jax.vmap(lambda rr, dd: jsl.solve_triangular(rr, dd, lower=False))(r, d)
        return c * (active if d.ndim == 2 else active[:, :, None])

    # The whitened stacked system, each pair's M rows compressed to 2K by a QR:
    # pair p = (i, j): rows [-√w_p V_i | √w_p V_j | √w_p z_p]; exposure i: L_i R_i⁻¹.
    # A gauge exposure's columns are removed from every row and replaced by a
    # unit block (its d is 0).
    sw = _safe_sqrt(weights)
    rows_p = jnp.concatenate(
        [-(sw[:, :, None] * v[pi]), sw[:, :, None] * v[pj], (sw * values)[:, :, None]], axis=2
    )  # (P, M, 2K + 1); a gauge exposure's columns are dropped after the compression
    # A unit-roundoff ridge keeps every compressed block nonsingular (pairs with
    # few valid bins, held-out folds), so the QR's derivative stays finite.
    tiny = jnp.asarray(working_eps(dtype), dtype) * jnp.eye(2 * k, 2 * k + 1, dtype=dtype)
    rows_p = jnp.concatenate([rows_p, jnp.broadcast_to(tiny, (len(pairs),) + tiny.shape)], axis=1)
    packed = jax.vmap(lambda m: jnp.linalg.qr(m, mode="r"))(rows_p)[:, : 2 * k, :]
    n_rows = len(pairs) * 2 * k + n * g.shape[1]
    stack = jnp.zeros((n_rows, n, k), dtype)
    rhs = jnp.zeros((n_rows,), dtype)
    row_p = np.arange(len(pairs) * 2 * k).reshape(len(pairs), 2 * k)
    stack = stack.at[row_p, pi[:, None], :].set(packed[:, :, :k] * free[pi][:, None, None])
    stack = stack.at[row_p, pj[:, None], :].set(packed[:, :, k : 2 * k] * free[pj][:, None, None])
    rhs = rhs.at[row_p].set(packed[:, :, 2 * k])
    row_n = len(pairs) * 2 * k + np.arange(n * g.shape[1]).reshape(n, g.shape[1])
    unit = jnp.concatenate([eye, jnp.zeros((g.shape[1] - k, k), dtype)])
    reg = jnp.where(free[:, None, None] > 0, g, unit[None])
    stack = stack.at[row_n, np.arange(n)[:, None], :].set(reg)
    stack = stack.reshape(n_rows, n * k)
    r_full = jnp.linalg.qr(jnp.concatenate([stack, rhs[:, None]], axis=1), mode="r")
    r_d = r_full[: n * k, : n * k]  # R_dᵀ R_d = A_d, the whitened normal matrix
    diag = jnp.abs(jnp.diagonal(r_d))
    graph_condition = (jnp.max(diag) / jnp.min(diag)) ** 2  # estimate of cond(A_d)
    if with_covariance:
        r_inv = jsl.solve_triangular(r_d, jnp.eye(n * k, dtype=dtype), lower=False)
        a_inv = r_inv @ r_inv.T
        solve = lambda rhs_: a_inv @ rhs_  # noqa: E731
    else:

        def solve(rhs_):
            y = jsl.solve_triangular(r_d, rhs_, lower=False, trans="T")
            return jsl.solve_triangular(r_d, y, lower=False)

    def whitened_gradient(coef):
        """``T_iᵀ`` × (minus half the objective's gradient) at ``coef``, (N, K)."""
        resid = weights * (values - jnp.einsum("pk,mk->pm", coef[pj] - coef[pi], design))
        proj = jnp.einsum("pml,pm->pl", v[pj], resid)
        proj_i = jnp.einsum("pml,pm->pl", v[pi], resid)
        grad = jnp.zeros((n, k), dtype).at[pj].add(proj).at[pi].add(-proj_i)
        grad = grad - jnp.einsum("nrl,nr->nl", g, jnp.einsum("nrk,nk->nr", regulariser, coef))
        return grad * free[:, None]

    def step(coef):
        delta = solve(whitened_gradient(coef).reshape(-1)).reshape(n, k) * free[:, None]
        return coef + from_whitened(delta), delta

    # The QR solution (Qᵀb is the last column of the R of [F | b]), then corrected
    # semi-normal-equation steps R_dᵀ R_d δ = Tᵀ(-½ gradient) on the original problem.
    qtb = r_full[: n * k, n * k]
    if with_covariance:
        d0 = r_inv @ qtb
    else:
        d0 = jsl.solve_triangular(r_d, qtb, lower=False)
    d0 = d0.reshape(n, k) * free[:, None]
    coef = from_whitened(d0)
    delta = d0
    for _ in range(refinement_steps):
        coef, delta = step(coef)
    # The last step's size in the norm of the data fit, ‖δ‖²_A = |R_d δ|², split by
    # exposure: δ_iᵀ (A_d δ)_i (summed over a connected group: its ‖δ‖²_A).
    a_delta = (r_d.T @ (r_d @ delta.reshape(-1))).reshape(n, k)
    correction = jnp.sum(delta * a_delta, axis=1)
    if mix is not None:
        coef = jnp.asarray(mix, dtype) @ coef
    if with_covariance and mix is None:
        blocks = a_inv.reshape(n, k, n, k)[jnp.arange(n), :, jnp.arange(n), :]
        half = from_whitened(blocks)  # R_i⁻¹ [A_d⁻¹]_ii
        cov = from_whitened(jnp.swapaxes(half, 1, 2))  # R_i⁻¹ (R_i⁻¹ [A_d⁻¹]_ii)ᵀ
        cov = cov * free[:, None, None]
    elif with_covariance:
        # Full covariance of c = R⁻¹ d (pinned and inactive rows 0), then mixed.
        a4 = a_inv.reshape(n, k, n * k)
        left = from_whitened(a4).reshape(n, k, n, k)  # R_n⁻¹ A4[n, :, m, :]
        right = jnp.transpose(left, (2, 3, 0, 1)).reshape(n, k, n * k)
        full = from_whitened(right).reshape(n, k, n, k)  # [m, q, n, p]
        full = full * free[:, None, None, None] * free[None, None, :, None]
        mixed = jnp.asarray(mix, dtype)
        cov = jnp.einsum("in,mqnp,im->ipq", mixed, full, mixed)
    else:
        cov = jnp.full((n, k, k), jnp.nan, dtype)
    return dict(
        coef=coef,
        cov=cov,
        correction=correction,
        whitened_norm=_safe_sqrt(jax.lax.stop_gradient(jnp.sum(d0 * d0, axis=1))),
        graph_condition=graph_condition,
    )


def fit_roundoff(fit: dict, coefficients: Float[Array, " k"], sigma_u) -> Float[Array, ""]:
    """`roundoff_ratio` of a prepared single-reference fit (``prepare_fit``'s dict):
    the estimated rounding error of its solve in units of the statistical 1σ
    ``sigma_u`` of one unit of normalised weight."""
    return roundoff_ratio(
        fit["design"],
        fit["sqrt_w"].reshape(-1),
        fit["penalty"],
        fit["sqrt_mu"],
        fit["sqrt_eps"],
        coefficients,
        sigma_u,
    )


def global_roundoff(sol: dict, groups: np.ndarray, sigma2, dtype) -> Float[Array, " N"]:
    """Estimated rounding error of the global solve per exposure, in units of the
    statistical 1σ (``sigma2``: the variance of one unit of normalised weight).

    The larger of (a) the a-priori estimate ``u √K |d_i| / σ`` (backward error of
    the whitened QR, as in `roundoff_ratio`) and (b) the size of the last
    refinement step in the norm of the data fit, ``‖δ‖_A / σ`` over the exposure's
    connected group (``sol`` from `solve_pair_blocks`); the largest over the
    exposure's group (one solve serves the whole group)."""
    groups = np.asarray(groups)
    k = sol["coef"].shape[1]
    sigma2, correction = jax.lax.stop_gradient((sigma2, sol["correction"]))
    sigma = jnp.sqrt(sigma2)
    prior = working_eps(dtype) * jnp.sqrt(k) * sol["whitened_norm"] / sigma
    same = jnp.asarray((groups[:, None] == groups[None, :]) & (groups[:, None] >= 0), dtype)
    post = jnp.sqrt(jnp.abs(same @ correction) + jnp.abs(correction)) / sigma
    # One solve serves a whole group: its error is shared, so is the flag.
    worst = jnp.max(jnp.where(same > 0, jnp.maximum(prior, post)[None, :], 0), axis=1)
    return jnp.maximum(worst, jnp.maximum(prior, post))


def _safe_sqrt(x):
    """``√x`` for ``x >= 0`` with a finite derivative (0) at ``x = 0`` (weights of
    masked or held-out bins)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1)), 0)


def warn_ill_conditioned(status) -> None:
    """Warn (`RuntimeWarning`) naming the exposures with status ``ILL_CONDITIONED``
    (5): their models are applied but not trustworthy at the working precision."""
    bad = np.flatnonzero(np.asarray(status) == 5)
    if bad.size:
        warnings.warn(
            f"exposure(s) {bad.tolist()}: {ILL_CONDITIONED_MESSAGE}", RuntimeWarning, stacklevel=3
        )
