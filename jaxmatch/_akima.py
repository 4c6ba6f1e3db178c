"""Akima interpolation (Akima 1970), separable and vectorised, as cubic Hermite.

On knots ``t_0 < … < t_{k-1}`` with values ``f``, the secant slopes are
``m_i = (f_{i+1} - f_i) / h_i``, extended by two on each side
(``m_{-1} = 2 m_0 - m_1``, ``m_{-2} = 2 m_{-1} - m_0`` and likewise at the end).
The derivative at knot ``i`` is

    d_i = (|m_{i+1} - m_i| m_{i-1} + |m_{i-1} - m_{i-2}| m_i)
          / (|m_{i+1} - m_i| + |m_{i-1} - m_{i-2}|)

or ``(m_{i-1} + m_i) / 2`` when the denominator is 0, and each interval is the
cubic Hermite polynomial through ``(f_i, d_i)`` and ``(f_{i+1}, d_{i+1})``;
outside the knots the end intervals' cubics continue (as SciPy's
``Akima1DInterpolator(extrapolate=True)``). The interpolant is linear in
``(f, d)``, so with the Hermite matrices ``V`` (values) and ``D`` (derivatives)
of the query points the evaluation is ``V f + D d``: two matrix products, as for
the linear bases, with only the ``d`` computed per row. On pixel coordinates known
at trace time (the model image) the x direction is evaluated block by block or
run by run instead: each block (run) of pixels in one knot interval is the Hermite
cubic of its two knots.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float

from ._custom_types import AnyArray
from ._separable import constant_if_known, outer_sum


def akima_derivatives(t: np.ndarray, f: Float[Array, "k ..."]) -> Float[Array, "k ..."]:
    """Akima's derivative estimates ``d`` at the knots, along axis 0 of ``f`` (k ≥ 2)."""
    h = jnp.asarray(np.diff(t), dtype=f.dtype).reshape((-1,) + (1,) * (f.ndim - 1))
    m = (f[1:] - f[:-1]) / h
    if m.shape[0] == 1:
        return jnp.concatenate([m, m])
    lo1 = 2 * m[:1] - m[1:2]
    lo2 = 2 * lo1 - m[:1]
    hi1 = 2 * m[-1:] - m[-2:-1]
    hi2 = 2 * hi1 - m[-1:]
    mm = jnp.concatenate([lo2, lo1, m, hi1, hi2])  # m_{-2} … m_{k}
    w1 = jnp.abs(mm[3:] - mm[2:-1])  # |m_{i+1} - m_i|
    w2 = jnp.abs(mm[1:-2] - mm[:-3])  # |m_{i-1} - m_{i-2}|
    total = w1 + w2
    flat = total == 0  # double-where: no 0/0 in values or gradients
    safe = jnp.where(flat, 1.0, total)
    weighted = (w1 * mm[1:-2] + w2 * mm[2:-1]) / safe
    return jnp.where(flat, 0.5 * (mm[1:-2] + mm[2:-1]), weighted)


def hermite_matrices(x: Float[AnyArray, " n"], t: Float[AnyArray, " k"]) -> tuple[Array, Array]:
    """``V``, ``D`` ``(n, k)``: the cubic Hermite interpolant is ``V f + D d``.

    Each point uses the interval that contains it (the end intervals beyond the
    knots), with ``s = (x - t_a) / h_a`` and the Hermite basis
    ``h00 = 2s³ - 3s² + 1``, ``h10 = s³ - 2s² + s``, ``h01 = -2s³ + 3s²``,
    ``h11 = s³ - s²`` (the derivative terms scaled by ``h_a``).
    """
    tj = jnp.asarray(t, dtype=x.dtype)
    a = _interval_of(tj, x, jnp)
    h = tj[a + 1] - tj[a]
    w00, w01, w10, w11 = _hermite_weights((x - tj[a]) / h, h)
    cols = jnp.arange(len(t))[None, :]
    left = (cols == a[:, None]).astype(x.dtype)
    right = (cols == a[:, None] + 1).astype(x.dtype)
    v = left * w00[:, None] + right * w01[:, None]
    d = left * w10[:, None] + right * w11[:, None]
    return v, d


def _interval_of(t, x, xp):
    """Index ``a`` of the knot interval ``[t_a, t_{a+1})`` holding each ``x`` (the end
    intervals continue beyond the knots); ``xp``: NumPy or jax.numpy."""
    return xp.clip(xp.searchsorted(t, x, side="right") - 1, 0, len(t) - 2)


def _hermite_weights(s, h):
    """``(h00, h01, h10·h, h11·h)`` at the local coordinates ``s`` of an interval of
    length ``h``: the weights of ``f_a``, ``f_{a+1}``, ``d_a``, ``d_{a+1}``."""
    s2, s3 = s * s, s * s * s
    return 2 * s3 - 3 * s2 + 1, -2 * s3 + 3 * s2, (s3 - 2 * s2 + s) * h, (s3 - s2) * h


def akima_grid(
    coefficients: Float[Array, "ky kx"],
    knots_y: np.ndarray,
    knots_x: np.ndarray,
    y: Float[AnyArray, " ny"],
    x: Float[AnyArray, " nx"],
) -> Float[Array, "ny nx"]:
    """Separable Akima interpolation of knot values: along y, then along x (afw's order)."""
    vy, dy = constant_if_known(hermite_matrices, y, knots_y)
    columns = vy @ coefficients + dy @ akima_derivatives(knots_y, coefficients)  # (ny, kx)
    slopes = akima_derivatives(knots_x, columns.T).T  # (ny, kx)
    if isinstance(x, np.ndarray) and x.ndim == 1 and x.size > 0:
        block = _common_block(x, knots_x)
        if block >= MIN_BLOCK:
            return _hermite_by_blocks(columns, slopes, x, knots_x, block)
        runs = _interval_runs(x, knots_x)
        if len(runs) <= MAX_RUNS:
            return _hermite_by_runs(columns, slopes, x, knots_x, runs)
    vx, dx = constant_if_known(hermite_matrices, x, knots_x)
    left = jnp.concatenate([columns, slopes], axis=1)
    return outer_sum(left, jnp.concatenate([vx, dx], axis=1))


#: Blocks of at least this many pixels (`_common_block`) are evaluated block by block.
MIN_BLOCK = 8

#: At most this many runs of pixels in one knot interval are evaluated run by run
#: (`_hermite_by_runs`); more (unsorted coordinates) use the dense matrices.
MAX_RUNS = 256


def _interval_runs(x: np.ndarray, t: np.ndarray) -> list[tuple[int, int, int]]:
    """``(start, stop, a)``: maximal runs ``x[start:stop]`` in one interval ``a``
    (as `hermite_matrices` assigns them: end intervals continue beyond the knots)."""
    a = _interval_of(t, x, np)
    edges = np.flatnonzero(np.diff(a)) + 1
    starts = np.concatenate([[0], edges]).astype(int)
    stops = np.concatenate([edges, [len(x)]]).astype(int)
    return [(int(b), int(e), int(a[b])) for b, e in zip(starts, stops)]


def _common_block(x: np.ndarray, t: np.ndarray) -> int:
    """The largest ``b`` dividing ``len(x)`` such that every block ``x[i b:(i+1) b]``
    lies in one knot interval (the gcd of ``len(x)`` and the runs' starts; 1 when
    there is none larger). Equal cells of an even size ``c`` give ``b = c / 2``."""
    starts = np.flatnonzero(np.diff(_interval_of(t, x, np))) + 1
    return int(np.gcd.reduce(np.concatenate([[len(x)], starts]).astype(np.int64)))


def _hermite_by_blocks(
    columns: Float[Array, "ny k"],
    slopes: Float[Array, "ny k"],
    x: np.ndarray,
    t: np.ndarray,
    block: int,
) -> Float[Array, "ny nx"]:
    """`_hermite_by_runs` when every block of ``block`` pixels lies in one interval:
    the image is ``(ny, nx / block, block)``, each block the Hermite cubic of its
    interval's two knots with NumPy weights ``(nx / block, block)``, reshaped to
    ``(ny, nx)``. One elementwise expression, 4 multiply-adds per pixel, which XLA
    fuses into the image's consumers; the runs' pieces and their concatenation are
    written to memory when the image has more than one consumer (16 × 1024² float32,
    ``sci + M`` and a sum over ``M``: 35 ms by blocks, 58 ms by runs)."""
    columns, slopes = lax.optimization_barrier((columns, slopes))
    dtype = columns.dtype
    xb = x.reshape(-1, block).astype(np.float64)
    a = _interval_of(t, xb[:, 0], np)
    h = (t[a + 1] - t[a])[:, None]
    weights = _hermite_weights((xb - t[a][:, None]) / h, h)
    values = (columns[:, a], columns[:, a + 1], slopes[:, a], slopes[:, a + 1])
    terms = [v[:, :, None] * jnp.asarray(w, dtype)[None] for v, w in zip(values, weights)]
    image = terms[0] + terms[1] + terms[2] + terms[3]
    return image.reshape(columns.shape[0], len(x))


def _hermite_by_runs(
    columns: Float[Array, "ny k"],
    slopes: Float[Array, "ny k"],
    x: np.ndarray,
    t: np.ndarray,
    runs: list[tuple[int, int, int]],
) -> Float[Array, "ny nx"]:
    """``V f + D d`` along x for every row, with pixel coordinates known at trace
    time: each run of pixels in interval ``a`` is the Hermite cubic of its two
    knots, 4 multiply-adds per pixel (the dense form has ``2k`` terms, above
    `outer_sum`'s unrolling limit for ``k > 16``: a matrix product whose image is
    written to memory). The per-run Hermite weights are NumPy constants; the row
    values and slopes are computed once, before the per-pixel loop."""
    columns, slopes = lax.optimization_barrier((columns, slopes))
    dtype = columns.dtype
    pieces = []
    for start, stop, a in runs:
        h = float(t[a + 1] - t[a])
        weights = _hermite_weights((x[start:stop] - t[a]) / h, h)
        values = (
            columns[:, a, None],
            columns[:, a + 1, None],
            slopes[:, a, None],
            slopes[:, a + 1, None],
        )
        pieces.append(sum(v * jnp.asarray(w, dtype)[None, :] for v, w in zip(values, weights)))
    return jnp.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]
