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
