"""Cardinal spline bases of degree 0, 1 and 3, knots and the roughness penalty.

A spline model is ``M(y, x) = Σ_pq C[p, q] Y_p(y) X_q(x)`` where ``X_q`` / ``Y_p``
are the *cardinal* functions of a 1-D spline space on the knots ``t``: the spline
whose value is 1 at knot ``q`` and 0 at the others. The coefficients are therefore
the model's values at the knots (docs/algorithm.md §5):

- degree 0 (``CONSTANT``): the value of the nearest knot;
- degree 1 (``LINEAR``): piecewise-linear interpolation, extended linearly;
- degree 3 (``NATURAL_SPLINE``): the natural cubic spline (zero second derivative
  at the end knots), extended linearly beyond them. It is the space of the
  ``k + 2`` cubic B-splines on these knots restricted by the two natural end
  conditions; the cardinal basis spans it with exactly ``k`` functions.

With one knot per bin the basis matrix at the bin centres is the identity, so an
unpenalised fit interpolates the bin values, as LSST's spline does.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._custom_types import AnyArray

#: afw's minimum number of points per axis for each interpolation style.
MIN_POINTS = {"CONSTANT": 1, "LINEAR": 2, "NATURAL_SPLINE": 3, "AKIMA_SPLINE": 5}
#: Spline degree of each style (AKIMA fits with the cubic basis, see `_model`).
DEGREE = {"CONSTANT": 0, "LINEAR": 1, "NATURAL_SPLINE": 3, "AKIMA_SPLINE": 3}


def max_style(points: int) -> str:
    """afw's ``lookupMaxInterpStyle``: the richest style ``points`` knots allow."""
    if points >= 5:
        return "AKIMA_SPLINE"
    if points >= 3:
        return "NATURAL_SPLINE"
    if points == 2:
        return "LINEAR"
    return "CONSTANT"


def knots(centres: np.ndarray, spacing: int) -> np.ndarray:
    """Knot positions [pixels]: the bin centres, or every ``spacing`` bins evenly."""
    n = len(centres)
    if spacing == 1:
        return np.asarray(centres, dtype=float)
    if n == 1:
        return np.asarray(centres, dtype=float)
    k = math.ceil((n - 1) / spacing) + 1
    if k == 1:
        return np.array([(centres[0] + centres[-1]) / 2.0])
    return np.linspace(centres[0], centres[-1], k)


def cardinal_basis(x: Float[AnyArray, " n"], t: np.ndarray, degree: int) -> Float[Array, "n k"]:
    """Cardinal basis functions on knots ``t`` (k,) evaluated at ``x`` (n,)."""
    x = jnp.asarray(x)
    t = np.asarray(t, dtype=float)
    k = len(t)
    if k == 1:
        return jnp.ones(x.shape + (1,), dtype=x.dtype)
    if degree == 0:
        mids = jnp.asarray((t[1:] + t[:-1]) / 2.0, dtype=x.dtype)
        index = jnp.searchsorted(mids, x, side="right")
        return (index[:, None] == jnp.arange(k)[None, :]).astype(x.dtype)
    # Segment a (clipped to the end segments, so outside the knots the end
    # pieces continue) and the local coordinate tau = (x - t_a) / h_a.
    tj = jnp.asarray(t, dtype=x.dtype)
    a = jnp.clip(jnp.searchsorted(tj, x, side="right") - 1, 0, k - 2)
    h = tj[a + 1] - tj[a]
    tau = (x - tj[a]) / h
    cols = jnp.arange(k)[None, :]
    left = (cols == a[:, None]).astype(x.dtype)
    right = (cols == a[:, None] + 1).astype(x.dtype)
    linear = left * (1 - tau)[:, None] + right * tau[:, None]
    if degree == 1 or k == 2:
        return linear
    if degree != 3:
        raise ValueError(f"spline degree must be 0, 1 or 3, got {degree}")
    # Natural cubic: second derivatives M = S c (M_0 = M_{k-1} = 0), and on
    # segment a: f = linear + h²/6 [(tau³ - tau) M_{a+1} + ((1-tau)³ - (1-tau)) M_a].
    # Outside the knots the spline continues linearly (f'' = 0 there), which the
    # clipped tau would not give for the cubic terms, so they are switched off.
    s = jnp.asarray(_second_derivative_map(t), dtype=x.dtype)
    inside = (x >= tj[0]) & (x <= tj[-1])
    cub_r = jnp.where(inside, tau**3 - tau, 0.0) * h**2 / 6.0
    cub_l = jnp.where(inside, (1 - tau) ** 3 - (1 - tau), 0.0) * h**2 / 6.0
    m_rows = left * cub_l[:, None] + right * cub_r[:, None]
    basis = linear + m_rows @ s
    # Linear extension: the end segments' slope of the cubic, f'(t_0) = slope_0 -
    # h_0 M_1 / 6 and f'(t_{k-1}) = slope_{k-2} + h_{k-2} M_{k-2} / 6.
    h0, hn = float(t[1] - t[0]), float(t[-1] - t[-2])
    below = jnp.where(x < tj[0], x - tj[0], 0.0)[:, None]
    above = jnp.where(x > tj[-1], x - tj[-1], 0.0)[:, None]
    basis = basis + below * (-(h0 / 6.0) * s[1])[None, :]
    basis = basis + above * ((hn / 6.0) * s[k - 2])[None, :]
    return basis


def _second_derivative_map(t: np.ndarray) -> np.ndarray:
    """``S`` (k, k) with ``M = S c``: second derivatives of the natural cubic spline."""
    k = len(t)
    h = np.diff(t)
    a = np.zeros((k - 2, k - 2))
    r = np.zeros((k - 2, k))
    for i in range(1, k - 1):
        row = i - 1
        if row > 0:
            a[row, row - 1] = h[i - 1]
        a[row, row] = 2.0 * (h[i - 1] + h[i])
        if row < k - 3:
            a[row, row + 1] = h[i]
        r[row, i - 1] = 6.0 / h[i - 1]
        r[row, i] = -6.0 / h[i - 1] - 6.0 / h[i]
        r[row, i + 1] = 6.0 / h[i]
    s = np.zeros((k, k))
    s[1:-1] = np.linalg.solve(a, r)
    return s


def difference_matrix(k: int, degree: int) -> np.ndarray:
    """Roughness operator along an axis: second differences (first for degree 0).

    Shape ``(k - d, k)`` with ``d`` the difference order; ``(0, k)`` when ``k <= d``.
    """
    d = 1 if degree == 0 else 2
    if k <= d:
        return np.zeros((0, k))
    return np.diff(np.eye(k), n=d, axis=0)
