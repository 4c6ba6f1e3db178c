"""Superpixel binning: cell layouts and masked, clipped cell statistics.

Two layouts (docs/algorithm.md §2 and §8):

- the *fit grid* of LSST's ``afw.math.Background``: ``n = ceil(L / b)`` cells with
  ``end_i = min(((i + 1) L + n // 2) // n, L)``, nearly equal sizes;
- the *diagnostic grid*: bins ``[i b, min((i + 1) b, L))``, the last one narrower.

Both are static (they depend on shapes only) and are returned as NumPy arrays.
The statistics are pure JAX, vectorised over all cells at once: the image is cut
into a ``(ny, sy, nx, sx)`` view (a plain reshape when the cells are equal, one
gather otherwise; short cells are padded and the padding is marked unusable) and
reduced over the two within-cell axes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

# The cell statistic `(value, s, m, n)`: value, std, number of pixels behind
# value (after clipping), number of usable pixels.
CellStats = tuple[Array, Array, Array, Array]


def cell_edges(length: int, bin_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Starts and sizes of the fit-grid cells along an axis (afw's layout) [pixels]."""
    if bin_size <= 0:
        raise ValueError(f"binSize must be a positive number of pixels, got {bin_size}")
    n = math.ceil(length / bin_size)
    ends = np.minimum(((np.arange(n) + 1) * length + n // 2) // n, length)
    starts = np.concatenate([[0], ends[:-1]])
    return starts.astype(np.int64), (ends - starts).astype(np.int64)


def bin_edges(length: int, bin_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Starts and sizes of the diagnostic bins ``[i b, min((i+1) b, L))`` [pixels]."""
    if bin_size <= 0:
        raise ValueError(f"binSize must be a positive number of pixels, got {bin_size}")
    starts = np.arange(0, length, bin_size, dtype=np.int64)
    return starts, np.minimum(starts + bin_size, length) - starts


def cell_centres(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Cell centres in pixel coordinates: ``start + size / 2 - 0.5``."""
    return starts + sizes / 2.0 - 0.5


def split_cells(
    image: Float[Array, "H W"],
    edges_y: tuple[np.ndarray, np.ndarray],
    edges_x: tuple[np.ndarray, np.ndarray],
) -> tuple[Array, Bool[Array, "ny sy nx sx"]]:
    """Cut an image into cells: ``(ny, sy, nx, sx)`` values and an in-cell mask.

    ``sy``/``sx`` are the largest cell sizes; positions beyond a shorter cell are
    padding (mask False). Equal cells covering the image are a free reshape.
    """
    (ys, ysz), (xs, xsz) = edges_y, edges_x
    h, w = image.shape
    sy, sx = int(ysz.max()), int(xsz.max())
    ny, nx = len(ys), len(xs)
    if np.all(ysz == sy) and np.all(xsz == sx) and ny * sy == h and nx * sx == w:
        cells = image.reshape(ny, sy, nx, sx)
        inside = np.ones((ny, sy, nx, sx), dtype=bool)
        return cells, jnp.asarray(inside)
    iy = ys[:, None] + np.arange(sy)[None, :]
    ix = xs[:, None] + np.arange(sx)[None, :]
    in_y = np.arange(sy)[None, :] < ysz[:, None]
    in_x = np.arange(sx)[None, :] < xsz[:, None]
    iy = np.minimum(iy, h - 1)
    ix = np.minimum(ix, w - 1)
    cells = image[iy[:, :, None, None], ix[None, None, :, :]]
    inside = in_y[:, :, None, None] & in_x[None, None, :, :]
    return cells, jnp.asarray(inside)


def _moments(x, weight, axes):
    """Weight sum, mean and sample std of ``x`` (weights: bool mask or soft weights in [0, 1]).

    The std uses ``Σ w (x - mean)² / (Σ w - 1)``, the ddof = 1 estimate for a 0/1
    mask. The sums are shifted (the mean is subtracted before squaring) so that
    float32 stays accurate on large sky levels.
    """
    n = jnp.sum(weight, axis=axes)
    w = weight.astype(x.dtype)
    n_f = jnp.sum(w, axis=axes) if weight.dtype != bool else n.astype(x.dtype)
    mean = jnp.sum(w * x, axis=axes) / jnp.maximum(n_f, 1e-30)
    dev = w * (x - jnp.expand_dims(mean, axes))
    var = jnp.sum(dev * (x - jnp.expand_dims(mean, axes)), axis=axes)
    enough = n_f >= 2
    var = var / jnp.where(enough, n_f - 1, 1.0)
    # sqrt'(0) is infinite: a constant cell (var == 0) must not send NaN backwards.
    positive = enough & (var > 0)
    std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)
    mean = jnp.where(n_f > 0, mean, jnp.nan)
    std = jnp.where(enough, std, jnp.nan)
    return n, mean, std


def masked_statistic(
    x: Array,
    usable: Array,
    axes: tuple[int, ...],
    statistic: str,
    num_sigma_clip: float | Array,
    num_iter: int,
    clip_sharpness: float | Array | None = None,
) -> CellStats:
    """``MEAN``, ``MEDIAN`` or ``MEANCLIP`` of ``x`` over ``usable``, reduced over ``axes``.

    Returns ``(value, s, m, n)``: the statistic, the standard deviation ``s`` of the
    pixels behind it (ddof=1), their number ``m`` and the number ``n`` of usable
    pixels (docs/algorithm.md §3). ``MEANCLIP`` starts from the mean and std and
    clips at ``num_sigma_clip`` σ for ``num_iter`` iterations; an iteration that
    would leave fewer than 2 pixels, or has σ = 0, keeps the previous set.

    With ``clip_sharpness = β`` (jaxmatch), the hard cut is replaced by the smooth
    weight ``sigmoid(β (num_sigma_clip - |x - μ| / σ))``, so the statistic is
    differentiable in ``num_sigma_clip`` and β (the hard clip is the limit
    β → ∞); ``m`` is then the sum of the weights.
    Unusable entries of ``x`` may be NaN/inf: they never reach the arithmetic.
    """
    x = jnp.where(usable, x, 0)  # the double-where: no NaN in values or gradients
    n, mean, std = _moments(x, usable, axes)
    if statistic == "MEAN":
        return mean, std, n, n
    if statistic == "MEDIAN":
        return _median(x, usable, axes), std, n, n
    if statistic != "MEANCLIP":
        raise ValueError(f"unknown gridStatistic {statistic!r}")
    keep, m, value, s = usable, n, mean, std
    if clip_sharpness is not None:
        keep = usable.astype(x.dtype)
    for _ in range(num_iter):
        ok_s = jnp.expand_dims(s > 0, axes)
        centre = jnp.expand_dims(jnp.where(s > 0, value, 0.0), axes)
        scale = jnp.expand_dims(jnp.where(s > 0, s, 1.0), axes)
        if clip_sharpness is None:
            trial = usable & (jnp.abs(x - centre) <= num_sigma_clip * scale)
        else:
            z = jnp.abs(x - centre) / scale
            trial = usable * jax.nn.sigmoid(clip_sharpness * (num_sigma_clip - z))
        m_trial = jnp.sum(trial, axis=axes)
        ok = ok_s & jnp.expand_dims(m_trial >= 2, axes)
        keep = jnp.where(ok, trial, keep)
        m, value, s = _moments(x, keep, axes)
    return value, s, m, n


def _median(x, usable, axes):
    """Median over ``axes`` of the usable entries (mean of the middle two for even n)."""
    other = [a for a in range(x.ndim) if a not in axes]
    perm = other + list(axes)
    xt = jnp.transpose(jnp.where(usable, x, jnp.inf), perm)
    ut = jnp.transpose(usable, perm)
    lead = xt.shape[: len(other)]
    flat = jnp.sort(xt.reshape(lead + (-1,)), axis=-1)
    n = jnp.sum(ut.reshape(lead + (-1,)), axis=-1)
    lo = jnp.clip((n - 1) // 2, 0, flat.shape[-1] - 1)
    hi = jnp.clip(n // 2, 0, flat.shape[-1] - 1)
    take = lambda i: jnp.take_along_axis(flat, i[..., None], axis=-1)[..., 0]  # noqa: E731
    return jnp.where(n >= 1, 0.5 * (take(lo) + take(hi)), jnp.nan)


def grid_statistics(
    image: Float[Array, "H W"],
    usable: Bool[Array, "H W"],
    edges_y: tuple[np.ndarray, np.ndarray],
    edges_x: tuple[np.ndarray, np.ndarray],
    statistic: str,
    num_sigma_clip: float | Array,
    num_iter: int,
    clip_sharpness: float | Array | None = None,
) -> CellStats:
    """Per-cell ``(value, s, m, n)``, each ``(ny, nx)``, of an image over usable pixels."""
    cells, inside = split_cells(image, edges_y, edges_x)
    use, _ = split_cells(usable, edges_y, edges_x)
    return masked_statistic(
        cells, use & inside, (1, 3), statistic, num_sigma_clip, num_iter, clip_sharpness
    )
