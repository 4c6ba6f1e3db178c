"""Superpixel binning: cell layouts and masked, clipped cell statistics.

Two layouts (docs/algorithm.md §2 and §8):

- the *fit grid* of LSST's ``afw.math.Background``: ``n = ceil(L / b)`` cells with
  ``end_i = min(((i + 1) L + n // 2) // n, L)``, nearly equal sizes;
- the *diagnostic grid*: bins ``[i b, min((i + 1) b, L))``, the last one narrower.

Both are static (they depend on shapes only) and are returned as NumPy arrays.
The statistics are pure JAX, vectorised over all cells at once: the image is cut
into a ``(ny, sy, nx, sx)`` view (a plain reshape when the cells are equal, one
gather otherwise; short cells are padded and the padding is marked unusable) and
reduced over the two within-cell axes.
"""
# pyright: reportReturnType=false, reportGeneralTypeIssues=false, reportCallIssue=false, reportArgumentType=false, reportAssignmentType=false
# (None placeholders filled before use in the pooled-statistics path.)

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from ._range import scale_down

# The cell statistic `(value, s, m, n)`: value, std, number of pixels behind
# value (after clipping), number of usable pixels.
CellStats = tuple[Array, Array, Array, Array]


def cell_edges(length: int, bin_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Starts and sizes of the fit-grid cells along an axis (afw's layout) [pixels]."""
    if bin_size <= 0:
        raise ValueError(f"binSize must be a positive number of pixels, got {bin_size}")
    n = math.ceil(length / bin_size)
    ends = np.minimum(((np.arange(n) + 1) * length + n // 2) // n, length)
    starts = np.concatenate([[0], ends[:-1]])
    return starts.astype(np.int64), (ends - starts).astype(np.int64)


def bin_edges(length: int, bin_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Starts and sizes of the diagnostic bins ``[i b, min((i+1) b, L))`` [pixels]."""
    if bin_size <= 0:
        raise ValueError(f"binSize must be a positive number of pixels, got {bin_size}")
    starts = np.arange(0, length, bin_size, dtype=np.int64)
    return starts, np.minimum(starts + bin_size, length) - starts


def cell_centres(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Cell centres in pixel coordinates: ``start + size / 2 - 0.5``."""
    return starts + sizes / 2.0 - 0.5


def split_cells(
    image: Float[Array, "H W"],
    edges_y: tuple[np.ndarray, np.ndarray],
    edges_x: tuple[np.ndarray, np.ndarray],
) -> tuple[Array, np.ndarray]:
    """Cut an image into cells: ``(ny, sy, nx, sx)`` values and an in-cell mask.

    ``sy``/``sx`` are the largest cell sizes; positions beyond a shorter cell are
    padding (mask False; a static NumPy array). Equal cells covering the image are
    a free reshape.
    """
    (ys, ysz), (xs, xsz) = edges_y, edges_x
    h, w = image.shape
    sy, sx = int(ysz.max()), int(xsz.max())
    ny, nx = len(ys), len(xs)
    if np.all(ysz == sy) and np.all(xsz == sx) and ny * sy == h and nx * sx == w:
        cells = image.reshape(ny, sy, nx, sx)
        return cells, np.ones((ny, sy, nx, sx), dtype=bool)
    iy = ys[:, None] + np.arange(sy)[None, :]
    ix = xs[:, None] + np.arange(sx)[None, :]
    in_y = np.arange(sy)[None, :] < ysz[:, None]
    in_x = np.arange(sx)[None, :] < xsz[:, None]
    iy = np.minimum(iy, h - 1)
    ix = np.minimum(ix, w - 1)
    cells = image[iy[:, :, None, None], ix[None, None, :, :]]
    return cells, in_y[:, :, None, None] & in_x[None, None, :, :]


def _sum_inner_axis_first(operands: tuple, axes: tuple[int, ...]) -> tuple:
    """Sum every operand over ``axes`` in one variadic reduction per axis.

    One pass over the data computes all the sums (XLA fuses the producers of the
    operands into the reduction loop; a variadic reduction also stays in XLA's own
    code on CPU, where a single full-size sum may go to a library kernel that
    cannot fuse them). The innermost (contiguous) axis is reduced first.
    """
    zeros = tuple(jnp.zeros((), op.dtype) for op in operands)
    add = lambda a, b: tuple(p + q for p, q in zip(a, b))  # noqa: E731
    for axis in sorted(axes, reverse=True):
        operands = tuple(lax.reduce(operands, zeros, add, (axis,)))
    return operands


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def power_sums(weights: tuple, devs: tuple, axes: tuple[int, ...]) -> tuple:
    """``(Σ w, Σ w d, Σ w d²)`` over ``axes`` for each pair ``(w, d)``, in one pass."""
    operands = []
    for w, d in zip(weights, devs):
        wd = w * d
        operands += [w, wd, wd * d]
    return _sum_inner_axis_first(tuple(operands), axes)


@power_sums.defjvp
def _power_sums_jvp(axes, primals, tangents):
    # lax.reduce with a custom computation has no derivative rule; the sums do.
    weights, devs = primals
    out = power_sums(weights, devs, axes)
    tangent_out = []
    for w, d, dw, dd in zip(weights, devs, *tangents):
        tangent_out += [
            jnp.sum(dw, axes),
            jnp.sum(dw * d + w * dd, axes),
            jnp.sum(dw * d * d + 2 * w * d * dd, axes),
        ]
    return out, tuple(tangent_out)


def _rough_centre(x, weight, axes, fold):
    """Mean of ``x`` over at most 4 evenly spaced slices along ``axes[0]`` (the rows
    of each cell): the shift of the one-pass moments.

    Any value within ~100 σ of the mean keeps their float32 rounding error
    negligible (the error of ``Σ(x - c)²`` grows as ``u (mean - c)²``), so a cell
    whose usable rows all fall between the sampled rows takes the weighted mean of
    its neighbours' samples (`_fill_from_neighbours`), else of every cell's; 0
    where no sampled row of any cell has a usable entry. Reading 4 rows per cell
    costs a few percent of a data pass; sampled columns would cost most of one
    (every row's cache lines), so none are read.
    """
    size = x.shape[axes[0]]
    rows = np.unique(np.linspace(0, size - 1, min(size, 4)).round().astype(np.int64))
    xs, ws = jnp.take(x, rows, axis=axes[0]), jnp.take(weight, rows, axis=axes[0])
    count, total = fold(jnp.sum(ws, axes)), fold(jnp.sum(ws * xs, axes))
    if count.ndim:
        count, total = _fill_from_neighbours(count, total)
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1), 0.0)


#: Steps of `_fill_from_neighbours`: an empty cell takes its neighbours' samples
#: up to this many cells away before it takes every cell's.
NEIGHBOUR_STEPS = 2


def _fill_from_neighbours(count: Array, total: Array) -> tuple[Array, Array]:
    """Sample weights ``count`` and weighted sums ``total`` on the cell grid, with
    each empty cell (``count == 0``) given the sums of its non-empty neighbours
    along every grid axis (`NEIGHBOUR_STEPS` times, so up to that many cells away),
    and the cells still empty given the sums over all cells."""
    all_count, all_total = jnp.sum(count), jnp.sum(total)

    def neighbours(a):
        """Sum of the two neighbours of each cell along every axis (0 beyond the edge)."""
        out = jnp.zeros_like(a)
        for axis, size in enumerate(a.shape):
            padded = jnp.pad(a, [(1, 1) if ax == axis else (0, 0) for ax in range(a.ndim)])
            before = lax.slice_in_dim(padded, 0, size, axis=axis)
            after = lax.slice_in_dim(padded, 2, size + 2, axis=axis)
            out = out + before + after
        return out

    for _ in range(NEIGHBOUR_STEPS):
        empty = count == 0
        count, total = (
            jnp.where(empty, neighbours(count), count),
            jnp.where(empty, neighbours(total), total),
        )
    empty = count == 0
    return jnp.where(empty, all_count, count), jnp.where(empty, all_total, total)


def _mean_std(centre, n, s1, s2):
    """Mean and sample std (ddof = 1) from sums shifted by ``centre``.

    ``mean = c + S1/n``, ``var = (S2 - S1²/n) / (n - 1)`` with ``S_k = Σ w (x - c)^k``.
    NaN mean for n = 0, NaN std for n < 2; std 0 (not NaN gradients) when var ≤ 0;
    std +inf when ``S2`` overflows.
    """
    safe_n = jnp.where(n > 0, n, 1)
    mean = centre + s1 / safe_n
    enough = n >= 2
    var = (s2 - s1 * s1 / safe_n) / jnp.where(enough, n - 1, 1)
    var = jnp.where(jnp.isposinf(s2), s2, var)  # Σd² overflowed: the scatter is inf, not NaN
    # sqrt'(0) is infinite: a constant cell (var == 0) must not send NaN backwards.
    positive = enough & (var > 0)
    std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)
    return jnp.where(n > 0, mean, jnp.nan), jnp.where(enough, std, jnp.nan)


def _clipped_moments(streams, axes, num_sigma_clip, num_iter):
    """Mean/std statistics of several data streams sharing one pass per iteration.

    Each stream is ``(deviation, clip, pooled, sharpness)``: ``deviation(c)`` gives
    ``(x - c, usable)`` for a centre ``c`` (broadcast against ``x``; ``x - c`` may be
    anything where not usable, and ``usable`` must depend on ``c`` too, see below);
    whether to sigma-clip (MEANCLIP); whether to pool the statistic over *all* axes
    (one number) rather than reduce over ``axes`` only; the soft-clip sharpness β
    (None: the hard clip). All streams have the same shape. Returns
    ``(value, s, m, n)`` per stream.

    Iteration 0 is the mean/std of the usable entries; each clip iteration keeps
    ``|x - μ| <= ν σ`` (or the soft weight ``sigmoid(β (ν - |x - μ|/σ))``) and keeps
    the previous set where σ = 0 or fewer than 2 entries would remain. The kept set
    is never stored: it is recomputed from the previous ``(μ, σ)`` inside the
    reduction, whose sums are shifted by the previous mean (iteration 0: a rough
    centre), for float32 accuracy.

    The clipped streams run all their iterations, 0 included, in one loop, which
    reads its arrays as they are in memory (unrolled passes, XLA re-derives a coded
    array from the exposures' planes in each). Every per-pixel quantity in the loop
    comes from ``deviation(centre)``, which changes each iteration, so none is
    hoisted out of the loop and stored as an extra plane either.
    """
    keep_dims = lambda a, pooled: a if pooled else jnp.expand_dims(a, axes)  # noqa: E731

    def fold(a, pooled):
        return jnp.sum(a) if pooled else a

    def one_pass(first, group, stats):
        """New ``(value, s, m, n)`` of the streams ``group`` after one pass (``first``:
        one flag for all, or one per stream)."""
        firsts = first if isinstance(first, list) else [first] * len(group)
        weights, devs = [], []
        for k, first, (value, s, _, _) in zip(group, firsts, stats):
            deviation, _, pooled, sharpness = streams[k]
            ok_s = s > 0
            centre = keep_dims(jnp.where(ok_s, value, 0.0), pooled)
            scale = keep_dims(jnp.where(ok_s, s, 1.0), pooled)
            d, use = deviation(centre)
            d = jnp.where(use, d, 0)  # double-where: no NaN in the sums or derivatives
            if sharpness is None:
                t = use & (first | (jnp.abs(d) <= num_sigma_clip * scale))
                t = t.astype(d.dtype)
            else:
                z = jnp.abs(d) / scale
                soft = jax.nn.sigmoid(sharpness * (num_sigma_clip - z))
                t = jnp.where(use, jnp.where(first, 1.0, soft), 0.0).astype(d.dtype)
            weights.append(t)
            devs.append(d)
        sums = power_sums(tuple(weights), tuple(devs), axes)
        out = []
        for j, (k, first, (value, s, m, n)) in enumerate(zip(group, firsts, stats)):
            pooled = streams[k][2]
            mt, s1, s2 = (fold(a, pooled) for a in sums[3 * j : 3 * j + 3])
            new_value, new_s = _mean_std(jnp.where(s > 0, value, 0.0), mt, s1, s2)
            ok = first | ((s > 0) & (mt >= 2))
            out.append(
                (
                    jnp.where(ok, new_value, value),
                    jnp.where(ok, new_s, s),
                    jnp.where(ok, mt, m),
                    jnp.where(first, mt, n),
                )
            )
        return out

    def start(k):
        """Before iteration 0: value = the rough centre (the shift), s = 1."""
        deviation, _, pooled, _ = streams[k]
        values, use = deviation(0.0)  # the values themselves
        x, w = jnp.where(use, values, 0), use.astype(values.dtype)
        centre = _rough_centre(x, w, axes, functools.partial(fold, pooled=pooled))
        one, zero = jnp.ones_like(centre), jnp.zeros_like(centre)
        return (centre, one, zero, zero)

    stats = [None] * len(streams)
    clipped = [k for k, stream in enumerate(streams) if stream[1] and num_iter > 0]
    plain = [k for k in range(len(streams)) if k not in clipped]
    if plain and not clipped:
        for k, st in zip(plain, one_pass(True, plain, [start(k) for k in plain])):
            stats[k] = st
    if clipped:
        # Unclipped streams ride along in the clip loop's passes (no pass of their
        # own): every iteration recomputes their unclipped statistics, shifted by the
        # previous iteration's mean. The shift changes, so XLA cannot hoist their
        # per-pixel terms out of the loop into stored planes; the result is the
        # one-pass statistic (to rounding: a better shift).
        flags = lambda i: [i == 0] * len(clipped) + [True] * len(plain)  # noqa: E731
        body = lambda i, st: one_pass(flags(i), clipped + plain, st)  # noqa: E731
        initial = [start(k) for k in clipped + plain]
        final = lax.fori_loop(0, num_iter + 1, body, initial)
        for k, st in zip(clipped + plain, final):
            stats[k] = st
    return stats


def masked_statistic(
    x: Array,
    usable: Array,
    axes: tuple[int, ...],
    statistic: str,
    num_sigma_clip: float | Array,
    num_iter: int,
    clip_sharpness: float | Array | None = None,
) -> CellStats:
    """``MEAN``, ``MEDIAN`` or ``MEANCLIP`` of ``x`` over ``usable``, reduced over ``axes``.

    Returns ``(value, s, m, n)``: the statistic, the standard deviation ``s`` of the
    pixels behind it (ddof=1), their number ``m`` and the number ``n`` of usable
    pixels (docs/algorithm.md §3), ``m`` and ``n`` in ``x``'s float dtype.
    ``MEANCLIP`` starts from the mean and std and clips at ``num_sigma_clip`` σ for
    ``num_iter`` iterations; an iteration that would leave fewer than 2 pixels, or
    has σ = 0, keeps the previous set.

    With ``clip_sharpness = β`` (jaxmatch), the hard cut is replaced by the smooth
    weight ``sigmoid(β (num_sigma_clip - |x - μ| / σ))``, so the statistic is
    differentiable in ``num_sigma_clip`` and β (the hard clip is the limit
    β → ∞); ``m`` is then the sum of the weights.
    Unusable entries of ``x`` may be NaN/inf: they never reach the arithmetic (a
    NaN marked usable counts as unusable, see `code_unusable`).
    Each clip iteration is one pass over ``x`` (see `_clipped_moments`).
    """
    (out,) = _statistics_with_pooled(
        code_unusable(x, usable), axes, statistic, num_sigma_clip, num_iter, clip_sharpness
    )
    return out


def code_unusable(x: Array, usable: Array | None) -> Array:
    """``x`` with NaN at the unusable entries (``usable=None``: ``x`` is coded already).

    The statistics read usability off the NaNs, so a usable entry must not be NaN
    (it would be dropped); usable ±inf stay and make the statistic non-finite.
    One coded array per stream is all a data pass reads.
    """
    return x if usable is None else jnp.where(usable, x, jnp.nan)


def _statistics_with_pooled(
    coded, axes, statistic, num_sigma_clip, num_iter, clip_sharpness=None, pooled=None
):
    """`masked_statistic` of the coded array ``coded``, and (optionally) the pooled,
    hard-clipped MEANCLIP of a second stream of the same shape, given by its
    deviation function ``pooled`` (see `_clipped_moments`), sharing the data passes."""
    if statistic not in ("MEAN", "MEDIAN", "MEANCLIP"):
        raise ValueError(f"unknown gridStatistic {statistic!r}")

    def grid_deviation(c):
        d = coded - c
        return d, ~jnp.isnan(d)  # from d, not `coded`: see `_clipped_moments`

    streams = [(grid_deviation, statistic == "MEANCLIP", False, clip_sharpness)]
    if pooled is not None:
        streams.append((pooled, True, True, None))
    out = _clipped_moments(streams, axes, num_sigma_clip, num_iter)
    if statistic == "MEDIAN":
        _, s, m, n = out[0]
        usable = ~jnp.isnan(coded)
        out[0] = (_median(jnp.where(usable, coded, 0), usable, axes), s, m, n)
    return out


def _order_keys(x: Array) -> Array:
    """Signed integers of ``x``'s width that sort like the floats ``x`` (no NaN).

    IEEE floats of one sign sort like their bit patterns; flipping all but the sign
    bit of the negative ones makes the signed order match (``-0 < +0``). The map is
    its own inverse.
    """
    int_type = {4: jnp.int32, 8: jnp.int64}[jnp.dtype(x.dtype).itemsize]
    bits = lax.bitcast_convert_type(x, int_type)
    return _flip_negative(bits)


def _flip_negative(bits):
    width = jnp.iinfo(bits.dtype).bits
    return bits ^ ((bits >> (width - 1)) & jnp.iinfo(bits.dtype).max)


def _unsigned_keys(x: Array) -> Array:
    """Unsigned integers that sort like the floats ``x``: `_order_keys` with the sign
    bit flipped (signed order → unsigned order)."""
    keys = _order_keys(x)
    unsigned = {jnp.int32: jnp.uint32, jnp.int64: jnp.uint64}[keys.dtype.type]
    sign = jnp.asarray(1 << (jnp.iinfo(unsigned).bits - 1), unsigned)
    return lax.bitcast_convert_type(keys, unsigned) ^ sign


def _float_of_unsigned_key(key: Array, dtype) -> Array:
    """Inverse of `_unsigned_keys`."""
    sign = jnp.asarray(1 << (jnp.iinfo(key.dtype).bits - 1), key.dtype)
    signed = {jnp.uint32: jnp.int32, jnp.uint64: jnp.int64}[key.dtype.type]
    return lax.bitcast_convert_type(
        _flip_negative(lax.bitcast_convert_type(key ^ sign, signed)), dtype
    )


# Key bits found per pass: 2**b - 1 counts in one reduction. The comparisons, not
# the reads, bound a pass on CPU: 16 × 1024² float32, MEDIAN engine 0.39-0.42 s with
# 4 bits (8 passes × 15 counts), 0.27-0.29 s with 2 (16 × 3), 0.52 s with 1.
MEDIAN_DIGIT_BITS = 2


def _median(x, usable, axes):
    """Median over ``axes`` of the usable entries (mean of the middle two for even n).

    Exact, without sorting: the lower middle value is the smallest key ``v`` (of
    integer keys that order like the floats, `_unsigned_keys`) with more than
    ``(n - 1) // 2`` usable keys ``<= v``, found most significant digit first:
    each pass counts the keys below the 3 candidate thresholds of the next 2 bits
    in one reduction (16 passes for float32, 32 for float64). The upper middle is
    that value again or the next larger key (one more pass). On CPU this is ~5x
    faster than XLA's sort of every cell (16 × 1024², 16 × 16 cells: 0.15 s
    against 0.76 s). Unusable entries get the largest key,
    which no usable value has, so the passes read one integer array only.

    Derivative: 1 on the middle entry (shared among exact ties; 0 for ±inf).
    """
    keep = lambda a: jnp.expand_dims(a, axes)  # noqa: E731
    keys = _unsigned_keys(lax.stop_gradient(jnp.where(usable, x, 0)))
    utype = keys.dtype
    largest = jnp.asarray(jnp.iinfo(utype).max, utype)
    keys = jnp.where(usable, keys, largest)
    n = jnp.sum(usable, axis=axes)
    rank_lo = jnp.maximum((n - 1) // 2, 0).astype(jnp.int32)
    width, b = jnp.iinfo(utype).bits, MEDIAN_DIGIT_BITS
    digits = jnp.arange(1, 2**b, dtype=utype)

    def next_digit(i, prefix):
        # Thresholds prefix + d·2^shift - 1, d = 1 .. 2^b - 1 (no overflow: the
        # answer lies in [prefix, prefix + 2^(shift+b) - 1]).
        shift = (width - b * (i + 1)).astype(utype)
        thresholds = prefix[..., None] + (digits << shift) - 1  # (..., 2^b - 1)
        below = tuple((keys <= keep(thresholds[..., d])).astype(jnp.int32) for d in range(2**b - 1))
        counts = _sum_inner_axis_first(below, axes)
        digit = sum((c <= rank_lo).astype(utype) for c in counts)
        return prefix + (digit << shift)

    v_lo = lax.fori_loop(0, width // b, next_digit, jnp.zeros(n.shape, utype))
    at_most, above = _sum_and_min(
        keys <= keep(v_lo), jnp.where(keys > keep(v_lo), keys, largest), axes
    )
    v_hi = jnp.where(at_most > n // 2, v_lo, above)

    def value_of(v):
        # The value itself (no sum of the equal entries that could overflow), with
        # derivative 1/count on each equal entry: a pass over x only when differentiated.
        value = _float_of_unsigned_key(v, x.dtype)
        return _with_tie_gradient(value, x, usable & (x == keep(value)), axes)

    return jnp.where(n >= 1, 0.5 * (value_of(v_lo) + value_of(v_hi)), jnp.nan)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _with_tie_gradient(value, x, equal, axes):
    """``value`` (a statistic equal to the entries ``equal`` of ``x``), whose derivative
    is the mean of ``x``'s tangents over those entries (0 on non-finite ones).

    The primal is ``value`` itself, so the forward computation reads no pixel; the
    sums over ``equal`` run only in a derivative.
    """
    return value


@_with_tie_gradient.defjvp
def _with_tie_gradient_jvp(axes, primals, tangents):
    value, x, equal = primals
    _, dx, _ = tangents
    count = jnp.sum(equal, axes).astype(x.dtype)
    total = jnp.sum(jnp.where(equal & jnp.isfinite(x), dx, 0), axes)
    return value, total / jnp.maximum(count, 1)


def _sum_and_min(flags, values, axes):
    """``(Σ flags, min values)`` over ``axes`` in one pass (``flags`` bool)."""
    flags = flags.astype(jnp.int32)
    init = (jnp.zeros((), jnp.int32), jnp.asarray(jnp.iinfo(values.dtype).max, values.dtype))
    combine = lambda a, c: (a[0] + c[0], jnp.minimum(a[1], c[1]))  # noqa: E731
    return lax.reduce((flags, values), init, combine, axes)


def grid_statistics(
    image: Float[Array, "H W"],
    usable: Bool[Array, "H W"] | None,
    edges_y: tuple[np.ndarray, np.ndarray],
    edges_x: tuple[np.ndarray, np.ndarray],
    statistic: str,
    num_sigma_clip: float | Array,
    num_iter: int,
    clip_sharpness: float | Array | None = None,
    pooled: tuple[Array | tuple[Array, ...], Array | None] | None = None,
    pooled_exponent: Int[Array, ""] | None = None,
) -> CellStats | tuple[CellStats, CellStats]:
    """Per-cell ``(value, s, m, n)``, each ``(ny, nx)``, of an image over usable pixels.

    ``usable=None``: ``image`` is coded already, NaN where unusable (`code_unusable`).

    With ``pooled = (terms, pooled_usable)``, returns ``(cell_stats, pooled_stats)``:
    also the hard-clipped ``MEANCLIP``, over the whole image, of the pooled image
    ``y = Σ terms`` (one ``(H, W)`` array or a tuple of them), counting the pixels
    where ``pooled_usable`` (``None``: where ``image`` is usable) and ``y`` is
    finite. It is computed in the same data passes (the cells cover every pixel
    once, so its sums are sums of per-cell partial sums), and ``y`` is never
    stored: each pass adds the terms. Used for the fit grid and ``diffImVar``.
    With ``pooled_exponent = e`` the pooled statistic is of ``y / 2^e`` (exact
    power-of-two units, `_range`; each pass scales the sum it forms, so no scaled
    copy of a term is stored either).
    """

    def cells_of(x):
        return split_cells(x, edges_y, edges_x)

    def coded_cells(x, use):
        cells, inside = cells_of(code_unusable(x, use))
        if inside.all():
            return cells
        return jnp.where(inside, cells, jnp.nan)  # padding of short cells: unusable

    cells = coded_cells(image, usable)
    deviation = None
    if pooled is not None:
        terms, pooled_usable = pooled
        terms = terms if isinstance(terms, tuple) else (terms,)
        term_cells = [cells_of(t)[0] for t in terms]
        if pooled_usable is not None:
            use_cells, inside = cells_of(pooled_usable)
            use_cells = use_cells & inside

        def deviation(c):
            # The centre is taken off the first term, so nothing here is independent
            # of it (see `_clipped_moments`); the grid's usable pixels are read off
            # its own coded cells, which the same pass reads anyway. The units are
            # applied to the sum, after the centre: a scaled term alone would be
            # loop-invariant, and XLA would store it as a plane.
            shift = c  # the centre in the terms' own units
            if pooled_exponent is not None:
                shift = scale_down(jnp.asarray(c, term_cells[0].dtype), -pooled_exponent)
            d = term_cells[0] - shift
            for t in term_cells[1:]:
                d = d + t
            if pooled_exponent is not None:
                d = scale_down(d, pooled_exponent)
            if pooled_usable is None:
                use = ~jnp.isnan(cells - c)
            else:
                use = use_cells
            # The mask directly, not NaN-coded and decoded again in the pass: 2 fewer
            # operations per pixel (16 × 2048² NATURAL_SPLINE: 408–442 → 376–385 ms).
            return d, use & jnp.isfinite(d)

    out = _statistics_with_pooled(
        cells, (1, 3), statistic, num_sigma_clip, num_iter, clip_sharpness, deviation
    )
    return out[0] if pooled is None else tuple(out)
