"""The bad-pixel bit mask as traced data, so mask-plane dictionaries do not recompile.

An `Exposure`'s mask-plane dictionary is static (part of its pytree structure) and
a bit mask computed from it is a Python int: passed to a compiled function, both
would be part of the compilation key, and every distinct dictionary (the same
planes on other bits, or other planes) would compile anew. The engine only needs
the bit mask ``Σ 2^bit`` of the bad planes: `traced_mask_bits` computes it outside
the compiled program, passes it as an int32 array, and gives the exposures one
canonical plane dictionary for the call.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from ._exposure import DEFAULT_MASK_PLANES, Exposure, from_planes

__all__ = ["traced_mask_bits", "with_canonical_planes"]

_CANONICAL = tuple(sorted(DEFAULT_MASK_PLANES.items()))


def with_canonical_planes(exposure: Exposure) -> Exposure:
    """``exposure`` with the canonical plane dictionary (same arrays, no copy); only
    valid together with bit masks from `traced_mask_bits`."""
    if exposure.mask_planes == _CANONICAL:
        return exposure
    return from_planes(exposure.image, exposure.mask, exposure.variance, _CANONICAL)


def traced_mask_bits(
    reference: Exposure, science: Exposure, planes: Sequence[str]
) -> tuple[Exposure, Exposure, jnp.ndarray, jnp.ndarray]:
    """``(reference, science, bits_ref, bits_sci)`` for a compiled call.

    ``bits_*`` = OR of ``1 << bit`` over ``planes`` in each exposure's own
    dictionary (`ValueError` naming a plane it lacks), as int32 scalars; the
    exposures are returned with the canonical dictionary (same arrays, no copy),
    so the compiled program depends on neither dictionary.
    """
    bits_ref = jnp.asarray(reference.bitmask(planes), dtype=jnp.int32)
    bits_sci = jnp.asarray(science.bitmask(planes), dtype=jnp.int32)
    return with_canonical_planes(reference), with_canonical_planes(science), bits_ref, bits_sci
