"""`Basis` (static description of a model family) and `BackgroundModel`.

Every model is separable: ``M(y, x) = Σ_pq C[p, q] Y_p(y) X_q(x)``, so the model
image is ``Y (H × ky) · C (ky × kx) · Xᵀ (kx × W)`` and never needs an
``(H·W, K)`` design matrix. The one exception, ``AKIMA_SPLINE``, is evaluated
separably too: 1-D Akima interpolation (`_akima`) of the knot values along y for
every knot column, then along x (the order afw uses).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._akima import akima_grid
from ._chebyshev import chebyshev_matrix, to_unit_interval
from ._evaluate import grid_image
from ._separable import constant_if_known, outer_sum
from ._spline import DEGREE, cardinal_basis


@dataclasses.dataclass(frozen=True)
class Basis:
    """Static description of a background-model family on an ``(H, W)`` image.

    ``kind`` is ``"CHEBYSHEV"`` (fields ``order_y``, ``order_x``) or ``"SPLINE"``
    (fields ``style``, ``knots_y``, ``knots_x`` [pixels]).
    """

    kind: str
    shape: tuple[int, int]
    order_y: int = 0
    order_x: int = 0
    style: str = ""
    knots_y: tuple[float, ...] = ()
    knots_x: tuple[float, ...] = ()

    @property
    def coefficient_shape(self) -> tuple[int, int]:
        """``(ky, kx)``: the shape of the coefficient matrix ``C``."""
        if self.kind == "CHEBYSHEV":
            return (self.order_y + 1, self.order_x + 1)
        return (len(self.knots_y), len(self.knots_x))

    def matrix_y(self, y: Float[Array, " n"]) -> Float[Array, "n ky"]:
        """``Y_p(y)`` for pixel rows ``y`` (the linear fitting basis)."""
        if self.kind == "CHEBYSHEV":
            return chebyshev_matrix(to_unit_interval(y, self.shape[0]), self.order_y)
        return cardinal_basis(y, np.asarray(self.knots_y), DEGREE[self.style])

    def matrix_x(self, x: Float[Array, " n"]) -> Float[Array, "n kx"]:
        """``X_q(x)`` for pixel columns ``x`` (the linear fitting basis)."""
        if self.kind == "CHEBYSHEV":
            return chebyshev_matrix(to_unit_interval(x, self.shape[1]), self.order_x)
        return cardinal_basis(x, np.asarray(self.knots_x), DEGREE[self.style])

    def evaluate(
        self, coefficients: Float[Array, "ky kx"], y: Float[Array, " ny"], x: Float[Array, " nx"]
    ) -> Float[Array, "ny nx"]:
        """The model on the grid ``y × x`` of pixel coordinates, separably."""
        if self.kind == "SPLINE" and self.style == "AKIMA_SPLINE":
            ty, tx = np.asarray(self.knots_y), np.asarray(self.knots_x)
            return akima_grid(coefficients, ty, tx, y, x)
        left = constant_if_known(self.matrix_y, y) @ coefficients
        return outer_sum(left, constant_if_known(self.matrix_x, x))


class BackgroundModel(eqx.Module):
    """A fitted (differential) background model: coefficients plus their basis.

    ``coefficients`` has shape ``(..., ky, kx)``: leading axes for a batch of
    models of one family. Add ``getImage()`` to the science image to match it to
    the reference (LSST's ``Background`` / ``Approximate`` objects do the same).
    """

    coefficients: Float[Array, "*batch ky kx"]
    basis: Basis = eqx.field(static=True)

    def evaluate(self, y=None, x=None) -> Float[Array, "*batch ny nx"]:
        """The model at pixel rows ``y`` × columns ``x`` (default: every pixel)."""
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

    def __getitem__(self, index) -> BackgroundModel:
        if self.coefficients.ndim <= 2:
            raise TypeError("a single model cannot be indexed")
        return BackgroundModel(self.coefficients[index], self.basis)
