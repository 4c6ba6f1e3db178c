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

import equinox as eqx
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
    coef = jsl.solve_triangular(r, qtb, lower=False) * act
    if not with_covariance:
        return coef
    # R⁻¹ only for Σ (a caller that drops Σ drops its cost: the inverse and the
    # K × K product are most of the solve's time), after the coefficients' solve:
    # the barrier makes the two solves run one after the other, never side by side.
    r_after, _ = jax.lax.optimization_barrier((r, coef))
    r_inv = jsl.solve_triangular(r_after, jnp.eye(k, dtype=design.dtype), lower=False)
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

#: ε_i = GLOBAL_RIDGE_PER_CELL · (valid cells of exposure i) in the global solve
#: of a Chebyshev basis (docs/algorithm.md §10; splines keep RIDGE_PER_CELL: their
#: roughness floor already damps these modes, and a larger ε would pull their knot
#: values, the model itself, towards 0). Partially overlapping exposures share modes that no
#: single overlap sees (functions small on every overlap); with 1e-10 their
#: eigenvalues (~3e-10 of the whitened system's scale) lie below float32's unit
#: roundoff, and even float64 sets them from noise. 1e-6 (16 u of float32) damps
#: them in both precisions; a well-determined coefficient shrinks by ~2e-6 of its
#: value.
GLOBAL_RIDGE_PER_CELL = 1e-6

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

#: Conjugate-gradient (CGLS) steps of the global solve on the whitened rows.
CGLS_STEPS = 40

#: CGLS stops when ``|F̃ᵀr|`` falls below this many float32 rounding units of its
#: start (later steps only add rounding, and can diverge).
CGLS_TOLERANCE = 1.0

#: Shift of the global solve's Cholesky preconditioner, in units of
#: ``u · √(N·K)`` (``u`` the unit roundoff): Cholesky's backward error.
CHOLESKY_SHIFT = 4.0


def working_eps(dtype) -> float:
    """Unit roundoff of the working dtype (float32: 6e-8, float64: 1.1e-16)."""
    return float(jnp.finfo(dtype).eps) / 2


def regulariser_rows(
    penalty: Float[Array | np.ndarray, "p k"],
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


class BlockSolution(eqx.Module):
    """What `solve_pair_blocks` returns (N exposures, K terms each).

    Attributes:
        coef: ``(N, K)`` coefficients (0 on pinned exposures and inactive terms).
        cov: ``(N, K, K)`` ``R_i⁻¹ [A_d⁻¹]_ii R_i⁻ᵀ``, the coefficient covariance in
            the units of ``1/w`` (NaN unless asked for).
        correction: ``(N,)`` ``δ_iᵀ (A_d δ)_i`` of the last refinement step ``δ``
            (summed over a connected group: ``‖δ‖²_A``, the squared size of the
            remaining rounding error in units of one unit of weight's variance).
        whitened_norm: ``(N,)`` ``|d_i|`` of the whitened solution.
        graph_condition: ``()`` the estimate ``(max l_ii / min l_ii)²`` of
            ``cond(A_d)`` from its (shifted) Cholesky factor.
        sensitivity: ``(N,)`` ``|Δd_i|²``, how far a one-rounding-unit change of
            the pair right-hand sides moves the whitened solution (in units of one
            unit of weight's variance, as ``correction``).
    """

    coef: Float[Array, "N K"]
    cov: Float[Array, "N K K"]
    correction: Float[Array, " N"]
    whitened_norm: Float[Array, " N"]
    graph_condition: Float[Array, ""]
    sensitivity: Float[Array, " N"]


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
) -> BlockSolution:
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
    and the off-diagonal blocks ``-V_iᵀ diag(w_p) V_j`` (``V_i = B R_i⁻¹``, read
    off ``Q_i``: columns orthonormal in the ``Σ w``-weighted inner product) are
    products of well-scaled matrices, each entry at most 1 in size. The whitened
    normal matrix ``A_d`` (N·K)² — a block graph Laplacian of K × K blocks — is
    formed from these blocks (``O(P·M·K²)``), the gauge exposures' rows and
    columns replaced by unit blocks (null-space elimination: no Lagrange
    multipliers, no indefinite matrix), and factorised by Cholesky
    (``(N·K)³/3``). ``A_d`` has the conditioning of the overlap graph alone (how
    well overlaps tie exposures to the gauge), not that of the basis, so its
    normal equations lose ``log10 cond(A_d)`` digits where those of the raw basis
    lose ``2 log10 cond(B)``; the Cholesky factor is used only as a
    preconditioner: ``1 + refinement_steps`` Newton steps on the original
    least-squares objective, each ``A_d δ = T_iᵀ(-½ ∇)`` with the gradient from
    the original residual ``z - B(c_j - c_i)``, converge to the working
    precision's accuracy of that residual whenever ``u · cond(A_d) ≪ 1``.

    ``mix`` (N, N) (static, optional): return ``c'_i = Σ_j mix_ij c_j`` and its
    covariance instead (e.g. a gauge that subtracts each group's mean).

    Returns a `BlockSolution`.
    """
    dtype = design.dtype
    n, _, k = regulariser.shape
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    pi, pj = pairs[:, 0], pairs[:, 1]
    pinned = np.asarray(pinned, bool)
    free_np = ~pinned
    free = jnp.asarray(free_np, dtype)  # (N,)
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

    def from_whitened(d):
        """``c_i = R_i⁻¹ d_i`` (N, K) or (N, K, X), by triangular solves (backward
        stable; LAPACK calls one after the other, never side by side)."""
        c = jax.vmap(lambda rr, dd: jsl.solve_triangular(rr, dd, lower=False))(r, d)
        return c * (active if d.ndim == 2 else active[:, :, None])

    # The whitened rows of the least-squares problem (F d ≈ b, FᵀF = A_d): each
    # pair's M rows [-√w_p V_i | √w_p V_j | √w_p z_p] compressed to 2K by a QR
    # (P·M·(2K)², never an (N·K)-wide matrix), and every exposure's L_i R_i⁻¹. A
    # pinned exposure's columns are dropped (its d is 0), its rows made a unit block.
    sw = _safe_sqrt(weights)
    rows_p = jnp.concatenate(
        [-(sw[:, :, None] * v[pi]), sw[:, :, None] * v[pj], (sw * values)[:, :, None]], axis=2
    )
    # A unit-roundoff ridge keeps every compressed block nonsingular (pairs with
    # few valid bins, held-out folds), so the QR's derivative stays finite.
    tiny = jnp.asarray(working_eps(dtype), dtype) * jnp.eye(2 * k, 2 * k + 1, dtype=dtype)
    rows_p = jnp.concatenate([rows_p, jnp.broadcast_to(tiny, (len(pairs),) + tiny.shape)], axis=1)
    packed = jax.vmap(lambda a: jnp.linalg.qr(a, mode="r"))(rows_p)[:, : 2 * k, :]
    f_i = packed[:, :, :k] * free[pi][:, None, None]  # (P, 2K, K)
    f_j = packed[:, :, k : 2 * k] * free[pj][:, None, None]
    rhs_p = packed[:, :, 2 * k]  # (P, 2K)
    unit = jnp.concatenate([jnp.eye(k, dtype=dtype), jnp.zeros((g.shape[1] - k, k), dtype)])
    f_n = jnp.where(free[:, None, None] > 0, g, unit[None])  # (N, R, K)

    def f_apply(d):
        """``F d``: ``(P, 2K)`` pair rows and ``(N, R)`` regulariser rows."""
        return (
            jnp.einsum("prk,pk->pr", f_i, d[pi]) + jnp.einsum("prk,pk->pr", f_j, d[pj]),
            jnp.einsum("nrk,nk->nr", f_n, d),
        )

    def f_transpose(r_p, r_n):
        """``Fᵀ r`` ``(N, K)``."""
        out = jnp.einsum("nrk,nr->nk", f_n, r_n)
        out = out.at[pi].add(jnp.einsum("prk,pr->pk", f_i, r_p))
        return out.at[pj].add(jnp.einsum("prk,pr->pk", f_j, r_p))

    # A_d (N·K)², a block graph Laplacian of K × K blocks: unit diagonal blocks
    # (Q_iᵀQ_i = I), -V_iᵀ W_p V_j off the diagonal; a pinned exposure keeps only
    # its unit block. Its Cholesky factor preconditions the solve below.
    couple = np.asarray(free_np[pi] & free_np[pj], bool)
    if couple.any():
        cp, ci, cj = np.flatnonzero(couple), pi[couple], pj[couple]
        blocks = jnp.einsum("pmk,pm,pml->pkl", v[ci], weights[cp], v[cj])
    else:
        ci = cj = np.zeros(0, np.int64)
        blocks = jnp.zeros((0, k, k), dtype)
    a4 = jnp.zeros((n, n, k, k), dtype)
    a4 = a4.at[np.arange(n), np.arange(n)].set(jnp.eye(k, dtype=dtype))
    a4 = a4.at[ci, cj].add(-blocks).at[cj, ci].add(-jnp.swapaxes(blocks, 1, 2))
    a_d = jnp.swapaxes(a4, 1, 2).reshape(n * k, n * k)
    # Shifted by a few rounding units so that the factor exists at the working
    # precision whatever the smallest eigenvalue of A_d (modes that only the
    # penalty floor or the ε guard determine): a preconditioner, not the answer.
    shift = float(CHOLESKY_SHIFT * working_eps(dtype) * np.sqrt(n * k))
    chol = jnp.linalg.cholesky(a_d + shift * jnp.eye(n * k, dtype=dtype))
    diag = jnp.abs(jnp.diagonal(chol))
    graph_condition = (jnp.max(diag) / jnp.min(diag)) ** 2  # estimate of cond(A_d)
    # L⁻¹ (with the covariance): A_d⁻¹ ≈ L⁻ᵀ L⁻¹, and the solves below go through
    # it (one LAPACK call); else triangular solves with L.
    l_inv = (
        jsl.solve_triangular(chol, jnp.eye(n * k, dtype=dtype), lower=True)
        if with_covariance
        else None
    )

    def solve_l(x):  # L⁻¹ x
        if l_inv is not None:
            return l_inv @ x
        return jsl.solve_triangular(chol, x, lower=True)

    def solve_lt(x):  # L⁻ᵀ x
        if l_inv is not None:
            return l_inv.T @ x
        return jsl.solve_triangular(chol, x, lower=True, trans="T")

    def ratio(num, den):
        """``num / den``, 0 where ``den == 0`` (converged), finite derivatives."""
        nonzero = den != 0
        return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), 0)

    # CGLS on min |F Lᵀ⁻¹ y - b| (d = L⁻ᵀ y): conjugate gradients on the least-squares
    # problem itself, products with F and its transpose only, right-preconditioned
    # by the Cholesky factor (the preconditioned F has singular values
    # √(λ / (λ + shift)) near 1 but for a few weak modes). Like a QR of F, its
    # accuracy depends on cond(F) = cond(A_d)^½, not on cond(A_d).
    def precond_apply(y):
        return f_apply(solve_lt(y.reshape(-1)).reshape(n, k))

    def precond_transpose(r_p, r_n):
        return solve_l(f_transpose(r_p, r_n).reshape(-1)).reshape(n, k) * free[:, None]

    def cgls(rhs):
        """CGLS from d = 0 for pair right-hand sides ``rhs`` (X, P, 2K), run side
        by side; all stop when the first one's ``|F̃ᵀr|`` has fallen to the
        rounding level (further steps in float32 only add rounding), so that their
        differences are smooth in ``rhs``."""
        r_n0 = jnp.zeros((rhs.shape[0],) + f_n.shape[:2], dtype)
        s0 = jax.vmap(precond_transpose)(rhs, r_n0)
        gamma0 = jnp.sum(s0 * s0, axis=(1, 2))
        # float32's rounding level in any precision: in float64 the factor is
        # nearly exact, and the refinement below takes it from there.
        floor = (CGLS_TOLERANCE * working_eps(jnp.float32)) ** 2 * gamma0[0]

        def one_step(y, r_p, r_n, s, p, gamma):
            q_p, q_n = precond_apply(p)
            alpha = ratio(gamma, jnp.sum(q_p * q_p) + jnp.sum(q_n * q_n))
            r_p, r_n = r_p - alpha * q_p, r_n - alpha * q_n
            s_new = precond_transpose(r_p, r_n)
            gamma_new = jnp.sum(s_new * s_new)
            return y + alpha * p, r_p, r_n, s_new, s_new + ratio(gamma_new, gamma) * p, gamma_new

        def cgls_step(_, state):
            # Skipped once stopped (under vmap, e.g. held-out folds, both run).
            return jax.lax.cond(
                state[-1][0] > floor, lambda s: jax.vmap(one_step)(*s), lambda s: s, state
            )

        state = (jnp.zeros((rhs.shape[0], n, k), dtype), rhs, r_n0, s0, s0, gamma0)
        y = jax.lax.fori_loop(0, CGLS_STEPS, cgls_step, state)[0]
        return jax.vmap(lambda y_: solve_lt(y_.reshape(-1)).reshape(n, k))(y) * free[:, None]

    # The solve, and the same with the pair right-hand sides perturbed by one
    # rounding unit (fixed signs): their difference measures how far rounding
    # moves the answer, weakly determined modes included (status 5).
    signs = np.where(np.random.default_rng(0).random(rhs_p.shape) < 0.5, -1.0, 1.0)
    nudge = 1 + working_eps(dtype) * jnp.asarray(signs, dtype)
    d_both = cgls(jnp.stack([rhs_p, rhs_p * nudge]))
    d_total = d_both[0]
    sensitivity = jax.lax.stop_gradient(jnp.sum((d_both[1] - d_both[0]) ** 2, axis=1))
    coef = from_whitened(d_total)

    def whitened_gradient(coef):
        """``T_iᵀ`` × (minus half the objective's gradient) at ``coef``, (N, K): the
        residual ``b_d - A_d d`` of the whitened normal equations, computed from the
        original residual ``z - B(c_j - c_i)``."""
        resid = weights * (values - jnp.einsum("pk,mk->pm", coef[pj] - coef[pi], design))
        proj = jnp.einsum("pml,pm->pl", v[pj], resid)
        proj_i = jnp.einsum("pml,pm->pl", v[pi], resid)
        grad = jnp.zeros((n, k), dtype).at[pj].add(proj).at[pi].add(-proj_i)
        grad = grad - jnp.einsum("nrl,nr->nl", g, jnp.einsum("nrk,nk->nr", regulariser, coef))
        return grad * free[:, None]

    # Iterative refinement on the original residual, (A_d + shift) δ = Tᵀ(-½ ∇):
    # removes what the inexact whitening left (steps in the weak modes are damped
    # by the shift, so rounding there is not amplified).
    delta = jnp.zeros((n, k), dtype)
    for _ in range(refinement_steps):
        res = whitened_gradient(coef)
        delta = solve_lt(solve_l(res.reshape(-1))).reshape(n, k) * free[:, None]
        coef = coef + from_whitened(delta)
        d_total = d_total + delta
    # The last step's size in the norm of the data fit, ‖δ‖²_A, split by exposure:
    # δ_iᵀ (A_d δ)_i (summed over a connected group: its ‖δ‖²_A).
    a_delta = (a_d @ delta.reshape(-1)).reshape(n, k)
    correction = jnp.sum(delta * a_delta, axis=1)
    if mix is not None:
        coef = jnp.asarray(mix, dtype) @ coef
    if l_inv is not None and mix is None:
        # [A_d⁻¹]_ii = (L⁻¹[:, block i])ᵀ (L⁻¹[:, block i]).
        cols = l_inv.reshape(n * k, n, k)
        blocks_inv = jnp.einsum("rnk,rnl->nkl", cols, cols)
        half = from_whitened(blocks_inv)  # R_i⁻¹ [A_d⁻¹]_ii
        cov = from_whitened(jnp.swapaxes(half, 1, 2))  # R_i⁻¹ (R_i⁻¹ [A_d⁻¹]_ii)ᵀ
        cov = cov * free[:, None, None]
    elif l_inv is not None and mix is not None:
        # Full covariance of c = R⁻¹ d (pinned and inactive rows 0), then mixed.
        a_inv = (l_inv.T @ l_inv).reshape(n, k, n * k)
        left = from_whitened(a_inv).reshape(n, k, n, k)  # R_n⁻¹ A4[n, :, m, :]
        right = jnp.transpose(left, (2, 3, 0, 1)).reshape(n, k, n * k)
        full = from_whitened(right).reshape(n, k, n, k)  # [m, q, n, p]
        full = full * free[:, None, None, None] * free[None, None, :, None]
        mixed = jnp.asarray(mix, dtype)
        cov = jnp.einsum("in,mqnp,im->ipq", mixed, full, mixed)
    else:
        cov = jnp.full((n, k, k), jnp.nan, dtype)
    return BlockSolution(
        coef=coef,
        cov=cov,
        correction=correction,
        whitened_norm=_safe_sqrt(jax.lax.stop_gradient(jnp.sum(d_total * d_total, axis=1))),
        graph_condition=graph_condition,
        sensitivity=sensitivity,
    )


def global_roundoff(sol: BlockSolution, groups: np.ndarray, sigma2, dtype) -> Float[Array, " N"]:
    """Estimated rounding error of the global solve per exposure, in units of the
    statistical 1σ (``sigma2``: the variance of one unit of normalised weight).

    The largest of (a) the a-priori estimate ``u √K |d_i| / σ`` (backward error of
    the whitened rows, as in `roundoff_ratio`), (b) the size of the last
    refinement step in the norm of the data fit, ``‖δ‖_A / σ`` over the exposure's
    connected group, and (c) ``|Δd_i| / σ``, how far one rounding unit in the
    pair right-hand sides moves the whitened solution — the only one of the three
    that sees modes the data barely determine (a penalty floor or the ε guard
    does), whose rounding error the data-fit norm hides (``sol`` from
    `solve_pair_blocks`); the largest over the exposure's group (one solve serves
    the whole group)."""
    groups = np.asarray(groups)
    k = sol.coef.shape[1]
    sigma2, correction = jax.lax.stop_gradient((sigma2, sol.correction))
    sigma = jnp.sqrt(sigma2)
    prior = working_eps(dtype) * jnp.sqrt(k) * sol.whitened_norm / sigma
    same = jnp.asarray((groups[:, None] == groups[None, :]) & (groups[:, None] >= 0), dtype)
    post = jnp.sqrt(jnp.abs(same @ correction) + jnp.abs(correction)) / sigma
    moved = jnp.sqrt(sol.sensitivity) / sigma
    each = jnp.maximum(jnp.maximum(prior, post), moved)
    # One solve serves a whole group: its error is shared, so is the flag.
    worst = jnp.max(jnp.where(same > 0, each[None, :], 0), axis=1)
    return jnp.maximum(worst, each)


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
