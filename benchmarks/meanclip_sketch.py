"""A sketch (not library code) of MEANCLIP with one data pass per clip iteration.

Same maths as `jaxmatch._binning.masked_statistic(..., "MEANCLIP")` (docs §3):
start from mean/std, clip ``num_iter`` times at ``num_sigma_clip`` σ, keep the
previous set when σ = 0 or fewer than 2 pixels survive. Differences in *how*:

- the kept set of iteration k is never stored: it is ``usable & |x - μ_{k-1}| <=
  ν σ_{k-1}``, a function of the inputs and per-cell scalars, recomputed inside
  the reduction;
- each iteration is ONE variadic ``lax.reduce`` that returns the count, Σ(x-c)
  and Σ(x-c)² of the candidate set together, shifted by ``c = μ_{k-1}`` (close
  to the new mean, so float32 keeps its accuracy); the previous set's moments are
  already known, so "keep the previous set" is a per-cell ``where``;
- counts are summed in the data's float dtype (no bool → int32 array).

Used by `profile_stages.py` to measure what fewer passes would save.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _moments3(w, d, axes):
    """(Σw, Σw·d, Σw·d²) over ``axes`` in one variadic reduce."""
    zero = jnp.zeros((), d.dtype)

    def add(a, b):
        return (a[0] + b[0], a[1] + b[1], a[2] + b[2])

    wd = w * d
    return lax.reduce((w, wd, wd * d), (zero, zero, zero), add, axes)


def meanclip(x, usable, axes, num_sigma_clip, num_iter):
    """``(value, s, m, n)`` as in `masked_statistic` for MEANCLIP."""
    x = jnp.where(usable, x, 0)
    w = usable.astype(x.dtype)
    # Pass 1: count and sum; pass 2: shifted sum of squares.
    n, total = lax.reduce(
        (w, x), (jnp.zeros((), x.dtype),) * 2, lambda a, b: (a[0] + b[0], a[1] + b[1]), axes
    )
    mean = total / jnp.maximum(n, 1)
    _, s1, s2 = _moments3(w, x - jnp.expand_dims(mean, axes), axes)
    var = (s2 - s1 * s1 / jnp.maximum(n, 1)) / jnp.maximum(n - 1, 1)
    std = jnp.sqrt(jnp.maximum(var, 0))
    m, value, s = n, mean, std
    for _ in range(num_iter):
        c = jnp.expand_dims(value, axes)
        lim = jnp.expand_dims(num_sigma_clip * s, axes)
        d = x - c
        t = w * (jnp.abs(d) <= lim).astype(x.dtype)
        mt, t1, t2 = _moments3(t, d, axes)  # one pass
        ok = (s > 0) & (mt >= 2)
        new_mean = value + t1 / jnp.maximum(mt, 1)
        new_var = (t2 - t1 * t1 / jnp.maximum(mt, 1)) / jnp.maximum(mt - 1, 1)
        value = jnp.where(ok, new_mean, value)
        s = jnp.where(ok, jnp.sqrt(jnp.maximum(new_var, 0)), s)
        m = jnp.where(ok, mt, m)
    value = jnp.where(n >= 1, value, jnp.nan)
    s = jnp.where(n >= 2, s, jnp.nan)
    return value, s, m, n


def grid_meanclip(diff, usable, ny, nx, num_sigma_clip, num_iter):
    """MEANCLIP of equal bins that tile the image (the reshape layout)."""
    h, w = diff.shape
    cells = diff.reshape(ny, h // ny, nx, w // nx)
    use = usable.reshape(ny, h // ny, nx, w // nx)
    return meanclip(cells, use, (1, 3), num_sigma_clip, num_iter)


_ = jax  # keep the import for users of the module
