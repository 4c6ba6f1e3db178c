"""Source detection for plain images: a thresholded, dilated source mask.

A plain FITS image has no mask planes, so nothing tells the background fit where
the stars and galaxies are; a bin statistic such as MEAN then follows their light.
`detect_sources` marks them in the ``DETECTED`` plane before binning, the way
SExtractor and photutils users build a source mask:

1. a coarse local background ``B``: the median of each ``box × box`` block of usable
   pixels, interpolated bilinearly between block centres (extrapolated linearly
   beyond them; a block with fewer than
   half its pixels usable takes the median of the others);
2. the noise ``σ`` of one pixel from pixel-to-pixel differences
   (`jaxmatch.estimate_variance`, which sources barely affect);
3. the residual ``R = image − B`` smoothed by a 3 × 3 box (the mean of nine pixels,
   noise ``σ / 3``) and thresholded: a pixel is a source pixel where the smoothed
   ``R > nsigma · σ / 3`` and at least ``minarea`` of its 3 × 3 neighbourhood is;
4. the source pixels dilated by ``grow`` pixels (a square of side ``2·grow + 1``) to
   cover the faint wings.

Steps 1-3 run twice; the second background ignores the pixels detected by the first.
Only NumPy is used (no SciPy): the smoothing and the dilation are sums of shifted
copies.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ._exposure import Exposure, estimate_variance


class Detection(NamedTuple):
    """Settings of `detect_sources`.

    Attributes:
        nsigma: threshold of the 3 × 3-smoothed residual in units of its noise.
        minarea: pixels of the 3 × 3 neighbourhood (itself included) that must be
            above the threshold for a pixel to count (SExtractor's DETECT_MINAREA).
        grow: dilation radius [pixels].
        box: block size of the local background [pixels].
    """

    nsigma: float = 3.0
    minarea: int = 5
    grow: int = 2
    box: int = 64


def detect_sources(exposure: Exposure, detection: Detection = Detection()) -> Exposure:
    """``exposure`` with its sources marked in the ``DETECTED`` plane.

    Arguments:
        exposure: one exposure ``(H, W)``; its mask planes must include ``DETECTED``.
        detection: the thresholds (`Detection`).

    Pixels already flagged in any plane, or not finite, are ignored for the
    background and the noise. Returns a new `Exposure` (image and variance
    unchanged); `ValueError` when there is no ``DETECTED`` plane.
    """
    planes = exposure.getMaskPlaneDict()
    if "DETECTED" not in planes:
        raise ValueError(f"no DETECTED mask plane to mark sources in (planes: {sorted(planes)})")
    image = np.asarray(exposure.image, dtype=np.float64)
    mask = np.asarray(exposure.mask)
    usable = np.isfinite(image) & (mask == 0)
    sources = source_mask(image, usable, detection)
    new_mask = np.where(sources, mask | (1 << planes["DETECTED"]), mask).astype(np.int32)
    return Exposure(exposure.image, new_mask, exposure.variance, mask_planes=planes)


def source_mask(image: np.ndarray, usable: np.ndarray, detection: Detection) -> np.ndarray:
    """Boolean ``(H, W)``: the dilated source pixels of ``image`` (steps 1-4 above)."""
    sigma = _pixel_noise(image, usable)
    if not np.isfinite(sigma) or sigma <= 0:
        return np.zeros(image.shape, dtype=bool)
    found = np.zeros(image.shape, dtype=bool)
    for _ in range(2):
        background = _block_background(image, usable & ~found, detection.box)
        residual = np.where(usable, image - background, 0.0)
        smoothed = _box_sum(residual, 1) / np.maximum(_box_sum(usable.astype(float), 1), 1)
        above = usable & (smoothed > detection.nsigma * sigma / 3.0)
        # at least `minarea` of the 3 x 3 neighbours above too: no lone noise peaks
        found = above & (_box_sum(above.astype(np.int32), 1) >= detection.minarea)
    return _box_sum(found.astype(np.int32), detection.grow) > 0


def _pixel_noise(image: np.ndarray, usable: np.ndarray) -> float:
    noisy = np.where(usable, image, np.nan).astype(np.float32)  # σ needs no more digits
    variance = estimate_variance(jnp.asarray(noisy), jnp.zeros(image.shape, jnp.int32))
    return float(np.sqrt(np.asarray(variance)[0, 0]))


def _block_background(image: np.ndarray, usable: np.ndarray, box: int) -> np.ndarray:
    """Medians of ``box × box`` blocks, bilinearly interpolated to every pixel."""
    height, width = image.shape
    box = max(1, min(box, height, width))
    ny, nx = -(-height // box), -(-width // box)
    padded = np.full((ny * box, nx * box), np.nan)
    padded[:height, :width] = np.where(usable, image, np.nan)
    blocks = padded.reshape(ny, box, nx, box).transpose(0, 2, 1, 3).reshape(ny, nx, box * box)
    counts = np.isfinite(blocks).sum(axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        medians = np.nanmedian(blocks, axis=-1)
    poor = counts < (box * box) // 2
    fill = np.nanmedian(medians[~poor]) if np.any(~poor) else np.nanmedian(medians)
    medians = np.where(poor | ~np.isfinite(medians), fill if np.isfinite(fill) else 0.0, medians)
    centres_y = np.minimum((np.arange(ny) + 0.5) * box, height) - 0.5
    centres_x = np.minimum((np.arange(nx) + 0.5) * box, width) - 0.5
    rows = _lerp(medians, centres_x, np.arange(width), axis=1)
    return _lerp(rows, centres_y, np.arange(height), axis=0)


def _lerp(values: np.ndarray, centres: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``values`` (given at ``centres``) along ``axis``, extended
    linearly beyond the first and last centre (a sloped sky stays sloped)."""
    if len(centres) == 1:
        return np.repeat(values, len(coords), axis=axis)
    i0 = np.clip(np.searchsorted(centres, coords) - 1, 0, len(centres) - 2)
    t = (coords - centres[i0]) / (centres[i0 + 1] - centres[i0])
    lo, hi = np.take(values, i0, axis=axis), np.take(values, i0 + 1, axis=axis)
    shape = [1, 1]
    shape[axis] = len(coords)
    t = t.reshape(shape)
    return lo * (1 - t) + hi * t


def _box_sum(array: np.ndarray, radius: int) -> np.ndarray:
    """Sum over the ``(2·radius + 1)²`` square around each pixel (zero outside)."""
    if radius <= 0:
        return array.copy()
    height, width = array.shape
    padded = np.pad(array, radius)
    total = np.zeros_like(array)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            total = total + padded[dy : dy + height, dx : dx + width]
    return total
