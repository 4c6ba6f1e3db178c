"""The undersampling rules: which model terms the valid bins determine (§5).

LSST decides from the number of distinct bin rows and columns with data: a
Chebyshev fit of order ``d`` needs ``m > d`` of them (``m`` the smaller count).
``undersampleStyle`` then lowers the order (``REDUCE_INTERP_ORDER``), raises
(``THROW_EXCEPTION``; here a per-exposure status) or re-bins
(``INCREASE_NXNYSAMPLE``, done by `match` outside the compiled program). A
row/column count can pass while the valid bins still leave terms undetermined
(e.g. data on a diagonal), so a rank rule on the design matrix completes it.

The spline bases are never undersampled: the roughness penalty fills every knot.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from ._chebyshev import term_mask
from ._config import MatchBackgroundsConfig

# Relative residual below which a design column counts as a combination of the
# columns before it (docs/algorithm.md §5). Exactly dependent layouts give ~1e-14
# in float64; determined ones >= 3e-5 for every order <= 8 on 9x9..16x16 grids.
# float32 rounding leaves ~1e-5 for dependent columns, so there the bar is 1e-4
# (a design that ill-conditioned would lose 4 of float32's 7 digits anyway).
RANK_TOLERANCE = {4: 1e-4, 8: 1e-9}


class ActiveTerms(NamedTuple):
    """Which coefficients one exposure's fit may use, after the undersampling rule.

    - ``active``: ``(ky, kx)`` booleans; a NumPy constant when every term is
      always active (the spline), so the solve can specialise at trace time.
    - ``undersampled``: the exposure fails with ``UNDERSAMPLED``.
    - ``orders``: ``(2,)`` Chebyshev orders ``(y, x)`` actually used; ``-1`` for
      the spline.
    - ``m``: the smaller number of distinct bin rows/columns with a valid bin.
    """

    active: Bool[Array, "ky kx"] | np.ndarray
    undersampled: Bool[Array, ""]
    orders: Int[Array, "2"]
    m: Int[Array, ""]


def chebyshev_orders(config: MatchBackgroundsConfig) -> tuple[int, int]:
    """Requested Chebyshev orders ``(y, x)``: ``(orderY or order, order)``."""
    return (config.order if config.orderY is None else config.orderY), config.order


def sampled_extent(valid: Bool[Array, "ny nx"]) -> tuple[Int[Array, ""], Int[Array, ""]]:
    """Numbers of distinct bin rows and columns holding a valid bin, ``(my, mx)``."""
    return jnp.sum(jnp.any(valid, axis=1)), jnp.sum(jnp.any(valid, axis=0))


def all_terms_active(
    valid: Bool[Array, "ny nx"], coefficient_shape: tuple[int, int]
) -> ActiveTerms:
    """The spline rule: every knot value is fitted (the penalty fills missing bins)."""
    my, mx = sampled_extent(valid)
    return ActiveTerms(
        active=np.ones(coefficient_shape, dtype=bool),
        undersampled=jnp.zeros((), dtype=bool),
        orders=jnp.full((2,), -1, dtype=jnp.int32),
        m=jnp.minimum(my, mx),
    )


def chebyshev_active_terms(
    config: MatchBackgroundsConfig,
    valid: Bool[Array, "ny nx"],
    design: Float[Array, "M K"] | None = None,
) -> ActiveTerms:
    """Active Chebyshev terms after the undersampling rule (§5).

    ``TOTAL`` terms (``p + q <= d``): undersampled when ``m <= order``;
    ``TENSOR``: when ``mx <= order_x`` or ``my <= order_y``. ``REDUCE_INTERP_ORDER``
    lowers the order to ``m - 1`` (per axis for ``TENSOR``) instead of failing.
    With ``design`` (the ``(ny·nx, K)`` design matrix) the rank rule then drops
    (REDUCE_INTERP_ORDER) or flags (the other styles) the terms of every degree the
    valid bins do not determine (`determined_degree`).

    Arguments:
        config: ``order``, ``orderY``, ``chebyshevTerms``, ``undersampleStyle``.
        valid: ``(ny, nx)`` valid bins.
        design: ``(ny·nx, K)`` design matrix at the bin centres, or None.
    """
    order_y, order_x = chebyshev_orders(config)
    my, mx = sampled_extent(valid)
    m = jnp.minimum(mx, my)
    reduce = config.undersampleStyle == "REDUCE_INTERP_ORDER"
    total = config.chebyshevTerms == "TOTAL"
    if total:
        under = m <= config.order
        eff = jnp.where(under & reduce, m - 1, config.order)
        eff_y = eff_x = eff
    else:
        under = (mx <= order_x) | (my <= order_y)
        eff_x = jnp.where(reduce, jnp.minimum(order_x, mx - 1), order_x)
        eff_y = jnp.where(reduce, jnp.minimum(order_y, my - 1), order_y)
    p, q = np.arange(order_y + 1)[:, None], np.arange(order_x + 1)[None, :]
    base = jnp.asarray(term_mask(order_y, order_x, config.chebyshevTerms))
    degree = (p + q) if total else np.maximum(p, q)
    if total:
        active = base & (p + q <= eff)
    else:
        active = base & (p <= eff_y) & (q <= eff_x)
    if design is not None:
        # The highest degree whose terms the valid bins determine (§5).
        rank_order = determined_degree(design, valid, active, degree)
        if reduce:
            eff_y, eff_x = jnp.minimum(eff_y, rank_order), jnp.minimum(eff_x, rank_order)
            active = active & (degree <= rank_order)
        else:
            under = under | jnp.any(active & (degree > rank_order))
    return ActiveTerms(
        active=active,
        undersampled=under & (not reduce),
        orders=jnp.stack([eff_y, eff_x]).astype(jnp.int32),
        m=m,
    )


def determined_degree(
    design: Float[Array, "M K"],
    valid: Bool[Array, "ny nx"],
    active: Bool[Array, "ky kx"],
    degree: np.ndarray,
) -> Int[Array, ""]:
    """The largest ``d`` such that the valid bins determine every active term of
    degree ``<= d`` (the largest degree when they determine all of them).

    Modified Gram–Schmidt (twice, for stability) over the active columns of the
    valid rows, each normalised, in order of increasing degree: a column whose
    residual after projecting out the earlier ones is below `RANK_TOLERANCE` is
    dependent, and its degree and all above are undetermined. Plain JAX (no LAPACK
    call); a status check, so no gradient flows through it.

    Arguments:
        design: ``(ny·nx, K)`` design matrix.
        valid: ``(ny, nx)`` valid bins.
        active: ``(ky, kx)`` terms in the model.
        degree: ``(ky, kx)`` NumPy degree of each term.
    """
    degree = np.asarray(degree).reshape(-1)
    perm = np.argsort(degree, kind="stable")
    a = lax.stop_gradient(design) * valid.reshape(-1, 1) * active.reshape(1, -1)
    a = a[:, perm]
    norms = jnp.sqrt(jnp.sum(a * a, axis=0))
    a = a / jnp.where(norms > 0, norms, 1)
    tol = RANK_TOLERANCE[jnp.dtype(a.dtype).itemsize]

    def step(k, state):
        basis, independent = state
        v = lax.dynamic_index_in_dim(a, k, axis=1, keepdims=False)
        for _ in range(2):
            v = v - basis @ (basis.T @ v)
        size = jnp.sqrt(jnp.sum(v * v))
        ok = size > tol
        basis = lax.dynamic_update_index_in_dim(
            basis, jnp.where(ok, v / jnp.where(ok, size, 1), 0), k, axis=1
        )
        return basis, independent.at[k].set(ok)

    k = a.shape[1]
    _, independent = lax.fori_loop(0, k, step, (jnp.zeros_like(a), jnp.zeros(k, bool)))
    dependent = active.reshape(-1)[perm] & ~independent
    top = int(degree.max())
    return jnp.min(jnp.where(dependent, jnp.asarray(degree[perm]), top + 1)) - 1
