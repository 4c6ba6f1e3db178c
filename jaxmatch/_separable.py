"""The separable product ``M = L · Rᵀ`` of two thin matrices, as an image.

Every background model is ``M[i, j] = Σ_q L[i, q] R[j, q]`` with ``L`` ``(ny, k)``
(the y basis times the coefficients) and ``R`` ``(nx, k)`` (the x basis), ``k`` a
few to a few tens of terms.

For small ``k`` the sum is written out term by term (``k`` multiply-adds per
pixel): XLA then fuses it into whatever consumes the image (``sci + M``, the
residual sums), so the model image is never written to memory. On CPU a matrix
product with such a thin inner dimension runs at a fraction of the machine's
speed, and materialising the product costs a full extra pass (16 × 2048² float32:
the product 0.074 s, the unrolled sum 0.087 s *including* the addition of the
science image, the product followed by the addition 0.146 s). Above
``UNROLL_MAX_TERMS`` the code size would grow for little gain: a matrix product.
"""

from __future__ import annotations

import functools
from typing import cast

import jax
import jax.core
from jax import lax
from jaxtyping import Array, Float

from ._custom_types import AnyArray

UNROLL_MAX_TERMS = 32


def outer_sum(
    left: Float[AnyArray, "ny k"], right: Float[AnyArray, "nx k"]
) -> Float[Array, "ny nx"]:
    """``Σ_q left[:, q] ⊗ right[:, q]`` = ``left @ right.T``."""
    k = left.shape[-1]
    if k > UNROLL_MAX_TERMS:
        return cast(Array, left @ right.T)
    # Both factors are computed once, before the loop (else XLA may fuse the basis
    # functions' arithmetic into the per-pixel loop, k times over); the loop reads
    # rows of ``right.T``, contiguous when ``right`` is a constant (pixel grid known
    # at trace time: the transpose is then done once, in memory).
    left, right_t = lax.optimization_barrier((left, right.T))
    total = left[:, 0, None] * right_t[0]
    for q in range(1, k):
        total = total + left[:, q, None] * right_t[q]
    return cast(Array, total)


def constant_if_known(fn, *args):
    """``fn(*args)``, computed at trace time when no argument is traced.

    A basis matrix on the full pixel grid (``np.arange``) then becomes a constant of
    the compiled program, laid out as `outer_sum` reads it, instead of being
    recomputed on every call.
    """
    if any(isinstance(a, jax.core.Tracer) for a in args):
        return fn(*args)
    # One compiled program for the whole basis (evaluated op by op, each of its
    # few dozen operations would compile on its own: seconds for a new basis).
    with jax.ensure_compile_time_eval():
        owner = getattr(fn, "__self__", None)
        if owner is None:
            return _compiled(fn, None)(*args)
        return _compiled(fn.__func__, owner)(*args)


@functools.lru_cache(maxsize=256)
def _compiled(fn, owner):
    """``jax.jit`` of ``fn`` (of ``fn`` bound to ``owner``), one per equal key.

    Bound methods compare by the identity of their object; keying on the
    (hashable, value-compared) basis instead lets equal bases share a program.
    """
    return jax.jit(fn if owner is None else functools.partial(fn, owner))
