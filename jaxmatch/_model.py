"""`BackgroundModel`: fitted coefficients plus their basis (`_basis`)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._basis import (
    AbstractBasis as AbstractBasis,
    Basis as Basis,
    ChebyshevBasis as ChebyshevBasis,
    SplineBasis as SplineBasis,
)
from ._evaluate import grid_image


class BackgroundModel(eqx.Module):
    """A fitted (differential) background model: coefficients plus their basis.

    ``coefficients`` has shape ``(..., ky, kx)``: leading axes for a batch of
    models of one family. Add ``getImage()`` to the science image to match it to
    the reference (LSST's ``Background`` / ``Approximate`` objects do the same).
    """

    coefficients: Float[Array, "*batch ky kx"]
    basis: AbstractBasis = eqx.field(static=True)

    def evaluate(
        self, y: ArrayLike | None = None, x: ArrayLike | None = None
    ) -> Float[Array, "*batch ny nx"]:
        """The model at pixel rows ``y`` × columns ``x`` [pixels] (default: every pixel).

        Returns:
            ``(..., ny, nx)``: one image per model of the batch.
        """
        if y is None and x is None:  # the full grid: one cached compiled program
            return grid_image(self.coefficients, self.basis)
        h, w = self.basis.shape
        dtype = self.coefficients.dtype
        y = jnp.arange(h, dtype=dtype) if y is None else jnp.asarray(y, dtype=dtype)
        x = jnp.arange(w, dtype=dtype) if x is None else jnp.asarray(x, dtype=dtype)
        fn = lambda c: self.basis.evaluate(c, y, x)  # noqa: E731
        for _ in range(self.coefficients.ndim - 2):
            fn = jax.vmap(fn)
        return fn(self.coefficients)

    def getImage(self) -> Float[Array, "*batch H W"]:
        """The model image on the exposure's pixel grid (LSST's ``getImage``)."""
        return self.evaluate()

    def __getitem__(self, index: Any) -> BackgroundModel:
        if self.coefficients.ndim <= 2:
            raise TypeError("a single model cannot be indexed")
        return BackgroundModel(self.coefficients[index], self.basis)
