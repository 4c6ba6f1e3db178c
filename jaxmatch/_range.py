"""Squared diagnostics inside the working precision's range: exact power-of-two scaling.

``matchedMSE`` and ``diffImVar`` are squares of pixel values. In float32, squares
of values below ~1.1e-19 (the noise of images in cgs flux units, ~1e-20
erg s⁻¹ cm⁻² Å⁻¹) are below the normal range (``tiny`` = 1.2e-38), and XLA on CPU
flushes subnormal numbers to zero, inputs and results alike; squares above
~1.8e19 overflow. So the squares are summed in units of ``2^e``, a power of two
near the data's typical magnitude (scaling by ``2^e`` is exact), and the result
is scaled back. A result that lies outside the normal range of the working
precision is NaN (status ``NAN_DIAGNOSTIC``), not a silent 0 or inf, and so is
``diffImVar`` when its variance planes already hold subnormal values (flushed to
0 by the first arithmetic on them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

#: Strided sample taken of an image to find its typical magnitude: every this-th
#: row and column (1/256 of the pixels; 4,096 of a 1024² image).
SAMPLE_STRIDE = 16


def _sample(x: Float[Array, "H W"]) -> Float[Array, "h w"]:
    """A strided sample of ``x``, offset from the edges (XLA computes only the
    sampled entries of an elementwise expression)."""
    h, w = x.shape
    sy, sx = max(1, min(SAMPLE_STRIDE, h // 2)), max(1, min(SAMPLE_STRIDE, w // 2))
    return x[sy // 2 :: sy, sx // 2 :: sx]


def typical_exponent(x: Float[Array, "H W"]) -> Int[Array, ""]:
    """The binary exponent ``e`` of the typical magnitude of ``x``'s finite,
    non-zero entries: the rounded mean of ``frexp(|x|)``'s exponents over a strided
    sample; 0 where the sample has none. ``|x| / 2^e`` is then of order 1 for most
    entries (a few outliers barely move a mean of thousands of exponents)."""
    sample = jnp.abs(_sample(x))
    ok = jnp.isfinite(sample) & (sample > 0)
    _, exponent = jnp.frexp(jnp.where(ok, sample, 1))
    count = jnp.sum(ok)
    mean = jnp.sum(jnp.where(ok, exponent, 0)) / jnp.maximum(count, 1)
    return jnp.where(count > 0, jnp.round(mean), 0).astype(jnp.int32)


def has_subnormal(x: Float[Array, "H W"]) -> Bool[Array, ""]:
    """Whether ``x``'s strided sample holds a subnormal value (read off the bits:
    arithmetic on it would already see 0)."""
    info = jnp.finfo(x.dtype)
    int_type = {4: jnp.int32, 8: jnp.int64}[info.bits // 8]
    bits = jax.lax.bitcast_convert_type(_sample(x), int_type)
    exponent_mask = ((1 << (info.bits - 1)) - 1) & ~((1 << info.nmant) - 1)
    mantissa_mask = (1 << info.nmant) - 1
    return jnp.any(((bits & exponent_mask) == 0) & ((bits & mantissa_mask) != 0))


def _power_of_two(k: Int[Array, ""], dtype) -> Float[Array, ""]:
    """``2^k`` in ``dtype`` for ``|k|`` up to the exponent range (``ldexp`` of 1)."""
    return jnp.ldexp(jnp.ones((), dtype), k)


def scale_down(x: Float[Array, "*shape"], e: Int[Array, ""]) -> Float[Array, "*shape"]:
    """``x / 2^e``, exact for normal ``x`` and results: two factors ``2^-⌊e/2⌋`` and
    ``2^-⌈e/2⌉``, each inside the exponent range where ``2^-e`` might not be."""
    half = e // 2
    return x * _power_of_two(-half, x.dtype) * _power_of_two(half - e, x.dtype)


def scale_up(value: Float[Array, "*shape"], e: Int[Array, ""]) -> Float[Array, "*shape"]:
    """``value · 2^e``; NaN where that is outside the normal range of the dtype
    (below ``tiny`` but not 0, or above the largest finite number)."""
    info = jnp.finfo(value.dtype)
    _, k = jnp.frexp(value)  # value = m · 2^k, 0.5 <= |m| < 1
    total = k + e
    representable = (value == 0) | ((total - 1 >= info.minexp) & (total <= info.maxexp))
    scaled = scale_down(value, -e)
    return jnp.where(representable | ~jnp.isfinite(value), scaled, jnp.nan)
