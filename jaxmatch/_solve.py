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

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, Bool, Float


def solve_least_squares(
    design: Float[Array, "m k"],
    values: Float[Array, " m"],
    sqrt_weights: Float[Array, " m"],
    penalty: Float[Array, "p k"],
    sqrt_mu: Float[Array, ""],
    active: Bool[Array, " k"],
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
    r_aug = jnp.linalg.qr(jnp.concatenate([a, b[:, None]], axis=1), mode="r")
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
    penalty: Float[Array, "p k"],
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

    Conditioning (docs/algorithm.md §10). The normal matrix of the raw basis is
    never formed. Each exposure's diagonal block ``A_ii = Bᵀ diag(Σ_{p∋i} w_p) B +
    L_iᵀL_i`` has the square root ``S_i = [√(Σ_{p∋i} w_p) B; L_i]``; the QR
    ``S_i = Q_i R_i`` (accuracy ``cond(S_i)``, not its square) gives the whitened
    coordinates ``d_i = R_i c_i``, in which every diagonal block is exactly ``I``
    and the off-diagonal blocks ``-V_iᵀ diag(w_p) V_j`` (``V_i = B R_i⁻¹``, columns
    orthonormal in the ``Σ w``-weighted inner product) are products of
    well-scaled matrices. The block matrix left, ``A_d`` (N·K)², has the
    conditioning of the overlap graph alone (how well overlaps tie exposures to the
    gauge), not that of the basis. Its Cholesky factor solves for ``d``; the gauge
    exposures are eliminated (their rows and columns removed), so no Lagrange
    multipliers and no indefinite matrix. ``refinement_steps`` steps of iterative
    refinement on the original residual ``z - B(c_j - c_i)`` (in the working
    dtype) then remove what the inexact whitening left.

    ``mix`` (N, N) (static, optional): return ``c'_i = Σ_j mix_ij c_j`` and its
    covariance instead (e.g. a gauge that subtracts each group's mean).

    Returns a dict: ``coef`` (N, K) (0 on pinned and inactive terms); ``cov``
    (N, K, K) ``= R_i⁻¹ [A_d⁻¹]_ii R_i⁻ᵀ`` (covariance in the units of ``1/w``;
    NaN unless ``with_covariance``); ``correction`` (N,) the largest whitened
    component of the last refinement step (its rounding error in the units of
    ``d``, whose statistical 1σ is that of one unit of weight); ``graph_condition``
    the condition number of ``A_d`` (1-norm, exact with the covariance, else the
    Cholesky estimate ``(max l_ii / min l_ii)²``).
    """
    dtype = design.dtype
    n, _, k = regulariser.shape
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    pi, pj = pairs[:, 0], pairs[:, 1]
    free = jnp.asarray(~np.asarray(pinned, bool), dtype)  # (N,)
    b_act = design[None, :, :] * active[:, None, :]  # (N, M, K)

    # Per-exposure whitening: R_i of S_i = [√(Σ w) B; L_i].
    w_sum = jnp.zeros((n, weights.shape[1]), dtype).at[pi].add(weights).at[pj].add(weights)
    s = jnp.concatenate([jnp.sqrt(w_sum)[:, :, None] * b_act, regulariser], axis=1)
    r = jax.vmap(lambda a: jnp.linalg.qr(a, mode="r"))(s)[:, :k, :k]
    eye = jnp.eye(k, dtype=dtype)
    t = jax.vmap(lambda rr: jsl.solve_triangular(rr, eye, lower=False))(r)  # R_i⁻¹
    v = jnp.einsum("nmk,nkl->nml", b_act, t)  # V_i = B R_i⁻¹
    g = jnp.einsum("nrk,nkl->nrl", regulariser, t)  # L_i R_i⁻¹

    # A_d: I on the diagonal blocks, -V_iᵀ W_p V_j off it; gauge rows eliminated.
    off = jnp.einsum("pmk,pm,pml->pkl", v[pi], weights, v[pj])
    a = jnp.zeros((n, k, n, k), dtype)
    a = a.at[pi, :, pj, :].add(-off).at[pj, :, pi, :].add(-jnp.swapaxes(off, 1, 2))
    a = a * free[:, None, None, None] * free[None, None, :, None]
    a = a.at[jnp.arange(n), :, jnp.arange(n), :].add(eye[None])
    a = a.reshape(n * k, n * k)
    chol = jnp.linalg.cholesky(a)
    if with_covariance:
        a_inv = jsl.cho_solve((chol, True), jnp.eye(n * k, dtype=dtype))
        solve = lambda rhs: a_inv @ rhs  # noqa: E731
        norm1 = lambda m: jnp.max(jnp.sum(jnp.abs(m), axis=0))  # noqa: E731
        graph_condition = norm1(a) * norm1(a_inv)
    else:
        solve = lambda rhs: jsl.cho_solve((chol, True), rhs)  # noqa: E731
        diag = jnp.abs(jnp.diagonal(chol))
        graph_condition = (jnp.max(diag) / jnp.min(diag)) ** 2

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
        return coef + jnp.einsum("nkl,nl->nk", t, delta) * active, delta

    coef, delta = step(jnp.zeros((n, k), dtype))
    for _ in range(refinement_steps):
        coef, delta = step(coef)
    correction = jnp.max(jnp.abs(delta), axis=1)
    if mix is not None:
        coef = jnp.asarray(mix, dtype) @ coef
    if with_covariance and mix is None:
        blocks = a_inv.reshape(n, k, n, k)[jnp.arange(n), :, jnp.arange(n), :]
        cov = jnp.einsum("nkl,nlm,npm->nkp", t, blocks, t)
        cov = cov * (free[:, None, None] * active[:, :, None] * active[:, None, :])
    elif with_covariance:
        # Full covariance of c = T d (pinned and inactive rows 0), then mixed.
        scale = (free[:, None] * active)[:, :, None] * t  # (N, K, K)
        a4 = a_inv.reshape(n, k, n, k)
        full = jnp.einsum("nkl,nlmq,mpq->nkmp", scale, a4, scale)
        mixed = jnp.asarray(mix, dtype)
        cov = jnp.einsum("in,nkmp,im->ikp", mixed, full, mixed)
    else:
        cov = jnp.full((n, k, k), jnp.nan, dtype)
    return dict(coef=coef, cov=cov, correction=correction, graph_condition=graph_condition)
