"""Fit diagnostics of LSST's matchBackgrounds: ``fitRMS``, ``matchedMSE``, ``diffImVar``.

Definitions (docs/algorithm.md §8):

- ``fitRMS = sqrt(mean_bins (Z - M(nearest pixel))²)`` over the diagnostic bins
  ``[i·b, min((i+1)·b, L))`` with ≥ 2 usable pixels, ``Z`` their grid statistic;
- ``matchedMSE = mean_usable (diff - M)²`` = ``mean((ref - matchedSci)²)``;
- ``diffImVar`` = the ``MEANCLIP`` of the difference's variance plane over usable
  pixels (finite variance), before the model is subtracted.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ._binning import masked_statistic


def fit_rms(
    bin_values: Float[Array, "ny nx"],
    bin_valid: Bool[Array, "ny nx"],
    model_image: Float[Array, "H W"],
    edges_y: tuple[np.ndarray, np.ndarray],
    edges_x: tuple[np.ndarray, np.ndarray],
) -> Float[Array, ""]:
    """RMS of bin statistic minus the model at the pixel nearest each bin centre."""
    ypix = edges_y[0] + edges_y[1] // 2
    xpix = edges_x[0] + edges_x[1] // 2
    at_centres = model_image[ypix[:, None], xpix[None, :]]
    resid = jnp.where(bin_valid, jnp.where(bin_valid, bin_values, 0) - at_centres, 0)
    count = jnp.sum(bin_valid)
    mean_sq = jnp.sum(resid * resid) / jnp.maximum(count, 1).astype(resid.dtype)
    return jnp.where(count > 0, jnp.sqrt(mean_sq), jnp.nan)


def matched_mse(
    diff: Float[Array, "H W"], model_image: Float[Array, "H W"], usable: Bool[Array, "H W"]
) -> Float[Array, ""]:
    """Mean of ``(diff - model)²`` over usable pixels [ADU²]."""
    resid = jnp.where(usable, jnp.where(usable, diff, 0) - model_image, 0)
    count = jnp.sum(usable)
    return jnp.where(
        count > 0, jnp.sum(resid * resid) / jnp.maximum(count, 1).astype(resid.dtype), jnp.nan
    )


def diff_im_var(
    diff_variance: Float[Array, "H W"],
    usable: Bool[Array, "H W"],
    num_sigma_clip: float,
    num_iter: int,
) -> Float[Array, ""]:
    """Clipped mean of the difference image's variance plane over usable pixels [ADU²]."""
    ok = usable & jnp.isfinite(diff_variance)
    value, _, _, _ = masked_statistic(
        diff_variance, ok, (0, 1), "MEANCLIP", num_sigma_clip, num_iter
    )
    return value
