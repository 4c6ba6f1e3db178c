"""Shared annotation vocabulary.

``AnyArray``: a JAX array, or a NumPy array known at trace time (a pixel grid, a
penalty operator), which JAX then embeds as a constant of the compiled program.
Use it inside jaxtyping's dtype-and-shape hints: ``Float[AnyArray, " n"]``.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Array

AnyArray = Array | np.ndarray
