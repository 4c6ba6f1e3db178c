"""Chebyshev polynomials of the first kind on [-1, 1], and the 2-D term sets.

A Chebyshev model is ``M(y, x) = Σ_pq C[p, q] T_p(v) T_q(u)`` with pixel
coordinates mapped linearly onto the image box: ``u = 2 (x + 0.5) / W - 1``,
``v = 2 (y + 0.5) / H - 1`` (the box edges -0.5 and W - 0.5 map to -1 and 1).
The basis is orthogonal on [-1, 1], which keeps the least-squares problem well
conditioned in float32 (docs/algorithm.md §5).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._custom_types import AnyArray


def to_unit_interval(coords: Float[AnyArray, " n"], length: int) -> Float[AnyArray, " n"]:
    """Map pixel coordinates of an axis of ``length`` pixels onto [-1, 1]."""
    return 2.0 * (coords + 0.5) / length - 1.0


def chebyshev_matrix(t: Float[AnyArray, " n"], order: int) -> Float[Array, "n k"]:
    """``T_0(t) … T_order(t)`` (``k = order + 1`` columns) by the recurrence
    ``T_{k+1} = 2 t T_k - T_{k-1}``."""
    t = jnp.asarray(t)
    columns = [jnp.ones_like(t)]
    if order >= 1:
        columns.append(t)
    for _ in range(2, order + 1):
        columns.append(2.0 * t * columns[-1] - columns[-2])
    return jnp.stack(columns, axis=-1)


def term_mask(order_y: int, order_x: int, terms: str) -> np.ndarray:
    """Which ``C[p, q]`` are in the model, ``(order_y + 1, order_x + 1)`` booleans.

    ``TOTAL`` (LSST): ``p + q <= max(order_y, order_x)``; ``TENSOR``: all.
    """
    p = np.arange(order_y + 1)[:, None]
    q = np.arange(order_x + 1)[None, :]
    if terms == "TOTAL":
        return (p + q) <= max(order_y, order_x)
    if terms == "TENSOR":
        return np.ones((order_y + 1, order_x + 1), dtype=bool)
    raise ValueError(f"unknown chebyshevTerms {terms!r}")
