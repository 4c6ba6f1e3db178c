"""`ImageScaler`: a flux scale applied to an exposure before matching.

The counterpart of LSST's ``coaddUtils.ImageScaler``: a constant scale, or a
spatially varying one given as an ``(H, W)`` array. The scaled exposure is
``image · s`` and ``variance · s²``. **[deviation]** LSST's scaler multiplies the
image but not the variance; a flux scale ``s`` multiplies the noise variance by
``s²``, so jaxmatch scales both.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._exposure import Exposure


class ImageScaler(eqx.Module):
    """Multiply the image by ``scale`` (scalar or ``(H, W)``) and the variance by ``scale²``."""

    scale: Float[Array, " ..."]

    def __init__(self, scale):
        scale = jnp.asarray(scale, dtype=float)
        if scale.ndim not in (0, 2):
            raise ValueError(f"scale must be a scalar or an (H, W) array, got shape {scale.shape}")
        self.scale = scale

    def scaleExposure(self, exposure: Exposure) -> Exposure:
        """The scaled exposure (a new one; the input is not changed)."""
        if self.scale.ndim == 2 and self.scale.shape != exposure.image.shape[-2:]:
            raise ValueError(
                f"scale has shape {self.scale.shape}, the exposure {exposure.image.shape[-2:]}"
            )
        scale = self.scale.astype(exposure.image.dtype)
        return dataclasses.replace(
            exposure, image=exposure.image * scale, variance=exposure.variance * scale**2
        )
