"""Model images on the full pixel grid: one compiled, cached program per basis.

A `BackgroundModel`'s image on its exposure's grid is
``M = L · Rᵀ`` (`_separable.outer_sum`) with basis matrices that depend only on
the static `Basis` (the pixel grid ``0 … H-1`` × ``0 … W-1``). Evaluated op by op
(eagerly), every small array operation is a separate dispatch and the basis
matrices are rebuilt each time (~25 ms for a 1024² AKIMA model); here the whole
evaluation is one `jit`-compiled program keyed by the basis (a frozen, hashable
value), the coefficient shape and dtype, whose basis matrices are constants of the
program. Models of one basis share the compilation, so only the first call pays it.

The engine itself (`jaxmatch.match` with ``with_image``) returns the model images
it already computes for ``matched = sci + model`` (one compiled program writes
both, `MatchResult.model_image`), so nothing has to evaluate them again.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._compile import filter_jit


def _pixel_grid(basis, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rows and columns ``(0 … H-1, 0 … W-1)`` as NumPy arrays (trace-time constants)."""
    h, w = basis.shape
    return np.arange(h, dtype=dtype), np.arange(w, dtype=dtype)


@filter_jit
def _grid_image(coefficients: Float[Array, "*batch ky kx"], basis) -> Float[Array, "*batch H W"]:
    y, x = _pixel_grid(basis, coefficients.dtype)
    fn = lambda c: basis.evaluate(c, y, x)  # noqa: E731
    for _ in range(coefficients.ndim - 2):
        fn = jax.vmap(fn)
    return fn(coefficients)


def grid_image(coefficients: Float[ArrayLike, "*batch ky kx"], basis) -> Float[Array, "*batch H W"]:
    """The model image ``(*batch, H, W)`` of ``coefficients`` in ``basis`` on every pixel.

    The same values as ``basis.evaluate(c, arange(H), arange(W))`` (to the rounding
    of a compiled sum), computed by one cached compiled program. Works inside
    ``jit``/``grad``/``vmap`` too (then it is traced into the caller's program).
    """
    return _grid_image(jnp.asarray(coefficients), basis)
