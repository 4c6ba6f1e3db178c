"""Fit diagnostics of LSST's matchBackgrounds: ``fitRMS``, ``matchedMSE``, ``diffImVar``.

Definitions (docs/algorithm.md §8):

- ``fitRMS = sqrt(mean_bins (Z - M(nearest pixel))²)`` over the diagnostic bins
  ``[i·b, min((i+1)·b, L))`` with ≥ 2 usable pixels, ``Z`` their grid statistic;
- ``matchedMSE = mean_usable (diff - M)²`` = ``mean((ref - matchedSci)²)``;
- ``diffImVar`` = the ``MEANCLIP`` of the difference's variance plane over usable
  pixels (finite variance), before the model is subtracted: computed in the grid
  statistic's own data passes (``grid_statistics(..., pooled=...)`` in `_binning`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ._binning import power_sums
from ._range import scale_down, scale_up, typical_exponent


def centre_pixels(edges: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The pixel nearest each diagnostic bin's centre along an axis: ``start + size // 2``."""
    return edges[0] + edges[1] // 2


def fit_rms(
    bin_values: Float[Array, "ny nx"],
    bin_valid: Bool[Array, "ny nx"],
    model_at_centres: Float[Array, "ny nx"],
) -> Float[Array, ""]:
    """RMS of bin statistic minus the model at the pixel nearest each bin centre.

    ``model_at_centres`` is the model evaluated at `centre_pixels` of both axes.
    """
    resid = jnp.where(bin_valid, jnp.where(bin_valid, bin_values, 0) - model_at_centres, 0)
    count = jnp.sum(bin_valid)
    # Scale-aware: the squares of residuals of images in cgs units (~1e-19) would
    # underflow float32 (and flush to 0); those of the residual / its largest
    # magnitude cannot. The scale is a constant for the gradient.
    scale = jax.lax.stop_gradient(jnp.max(jnp.abs(resid)))
    scale = jnp.where(scale > 0, scale, 1)
    unit = resid / scale
    mean_sq = jnp.sum(unit * unit) / jnp.maximum(count, 1).astype(resid.dtype)
    return jnp.where(count > 0, scale * jnp.sqrt(mean_sq), jnp.nan)


def matched_mse(
    diff: Float[Array, "H W"],
    model_image: Float[Array, "H W"],
    usable: Bool[Array, "H W"],
) -> Float[Array, ""]:
    """Mean of ``(diff - model)²`` over usable pixels [ADU²]; NaN without any, or
    where it lies outside the dtype's normal range (`_range`).

    One pass: the count and the sum of squares are one variadic reduction, into
    which XLA fuses the residual (a plain sum of a full image goes, on CPU, to a
    library kernel that first writes the squares to memory: ~4x slower). The
    residual is summed in units of ``2^e``, the typical magnitude of the usable
    difference (`_range.typical_exponent` of a strided sample), so that its squares
    neither underflow nor overflow: a residual is 0 or at least about the rounding
    of its difference (``2^-24`` of it in float32), so ``|resid| / 2^e`` stays far
    above ``2^-63``, below which its square would leave float32's range. The sample is of
    ``diff``, not of the residual: a sampled residual would be a second use of the
    model image, which XLA then writes to memory and reads back (16 × 1024²
    float32: ~10 ms of a ~140 ms `match`).
    """
    e = jax.lax.stop_gradient(typical_exponent(jnp.where(usable, diff, 0)))
    resid = jnp.where(usable, jnp.where(usable, diff, 0) - model_image, 0)
    unit = scale_down(resid, e)
    count, _, sum_sq = power_sums((usable.astype(resid.dtype),), (unit,), (0, 1))
    mean_sq = scale_up(sum_sq / jnp.maximum(count, 1), 2 * e)
    return jnp.where(count > 0, mean_sq, jnp.nan)
