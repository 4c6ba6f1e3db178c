"""The things the benchmark times, besides `numpy_baseline.match_numpy`.

- `photutils_loop`: what a Python astronomer writes today — for each science
  exposure, ``photutils.background.Background2D`` on ``ref - sci`` with the same
  box size, then ``sci + bkg.background``.
- `sep_loop`: the fastest thing a user could pick instead — for each science
  exposure, SEP's C background (``sep.Background``) of ``ref - sci`` and the add.
- `lsst_workflow`: jaxmatch as LSST code uses it — NumPy arrays → `Exposure`s →
  ``MatchBackgroundsTask.run`` → ``getImage()`` of each model as NumPy.
- `memory_floor`: the least work any matcher must do — read every input plane
  once and write the output once — done by NumPy at memory speed.
- `workflow_floor`: the least work any LSST-API workflow must do — the arrays
  handed to JAX, one pass over them, the matched and model images written fresh
  and the models read back — with a statistic and a model far simpler than any
  config's; a bound on what the `lsst-api` row can reach.
- `measure_memory`: peak memory of one call (tracemalloc and peak-RSS delta).
"""

from __future__ import annotations

import functools
import resource
import time
import tracemalloc
import warnings

import numpy as np


def photutils_loop(
    ref_image, ref_mask, sci_image, sci_mask, config, bits_ref, bits_sci, *, out=None
):
    """``sci_i + Background2D(ref - sci_i).background`` for every exposure.

    Settings mirror the config: ``box_size = binSize``; ``MEANCLIP`` →
    ``MeanBackground`` with ``SigmaClip(sigma=numSigmaClip, maxiters=numIter)``
    (astropy's defaults otherwise: median centre, ddof=0 std); ``MEAN`` /
    ``MEDIAN`` → ``MeanBackground`` / ``MedianBackground`` without clipping.
    ``mask`` = the bad pixels (bad planes of either exposure, or non-finite
    difference). ``filter_size=1`` (jaxmatch does not median-filter the grid) and
    ``exclude_percentile=100`` (a box is used while it has any usable pixel, like
    jaxmatch's ``n >= 2`` rule; photutils' default 10 % would drop most boxes
    near sources). The interpolation is photutils' default (``BkgZoomInterpolator``,
    a cubic spline), the nearest photutils has to NATURAL_SPLINE/AKIMA; it has no
    Chebyshev fit, so the same loop stands for both model families.

    Returns ``(matched (N, H, W), n_failed)``; a failed exposure is left unchanged.
    """
    from astropy.stats import SigmaClip
    from photutils.background import Background2D, MeanBackground, MedianBackground

    if config.gridStatistic == "MEANCLIP":
        clip = SigmaClip(sigma=config.numSigmaClip, maxiters=config.numIter)
        estimator = MeanBackground()
    elif config.gridStatistic == "MEAN":
        clip, estimator = None, MeanBackground()
    else:
        clip, estimator = None, MedianBackground()
    out = np.empty_like(sci_image) if out is None else out
    ref_bad = (ref_mask & bits_ref) != 0
    failed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "input data contains invalid values" etc.
        for i in range(sci_image.shape[0]):
            diff = ref_image - sci_image[i]
            bad = ref_bad | ((sci_mask[i] & bits_sci) != 0) | ~np.isfinite(diff)
            try:
                bkg = Background2D(
                    diff,
                    config.binSize,
                    mask=bad,
                    sigma_clip=clip,
                    bkg_estimator=estimator,
                    filter_size=1,
                    exclude_percentile=100.0,
                )
                np.add(sci_image[i], bkg.background, out=out[i], casting="same_kind")
            except ValueError:
                out[i] = sci_image[i]
                failed += 1
    return out, failed


def sep_loop(ref_image, ref_mask, sci_image, sci_mask, config, bits_ref, bits_sci, *, out=None):
    """``sci_i + sep.Background(ref - sci_i, mask=bad, bw=bh=binSize, fw=fh=1).back()``.

    SEP needs C-contiguous arrays of native byte order: the difference image is a
    fresh NumPy array, so it is. ``fw = fh = 1``: no median filter of the grid (as
    jaxmatch and the photutils loop). SEP's statistic per box is its own
    (sigma-clipped mode/median estimate) whatever the config says, and its
    interpolation a bicubic spline: not the same algorithm, the same job.
    Returns ``(matched (N, H, W), n_failed)``.
    """
    import sep

    out = np.empty_like(sci_image) if out is None else out
    ref_bad = (ref_mask & bits_ref) != 0
    failed = 0
    for i in range(sci_image.shape[0]):
        diff = np.subtract(ref_image, sci_image[i])
        bad = ref_bad | ((sci_mask[i] & bits_sci) != 0) | ~np.isfinite(diff)
        try:
            bkg = sep.Background(diff, mask=bad, bw=config.binSize, bh=config.binSize, fw=1, fh=1)
            np.add(sci_image[i], bkg.back(dtype=diff.dtype), out=out[i], casting="same_kind")
        except Exception:  # noqa: BLE001 - a failed exposure is left as it is
            out[i] = sci_image[i]
            failed += 1
    return out, failed


def lsst_workflow(task, reference, exposures):
    """LSST's way: ``(image, mask, variance)`` NumPy arrays → `Exposure`s →
    ``task.run`` (the reference given) → ``getImage()`` of each model as NumPy.

    ``reference``: one ``(image, mask, variance)`` tuple; ``exposures``: a list of
    them. Returns ``(run's Struct, [model image or None per science exposure])``.
    """
    import jaxmatch

    ref = jaxmatch.Exposure(*reference)
    scis = [jaxmatch.Exposure(*planes) for planes in exposures]
    result = task.run([ref, *scis], "deepCoadd_tempExp", refExpDataRef=ref)
    images = [
        None if info.backgroundModel is None else np.asarray(info.backgroundModel.getImage())
        for info in result.backgroundInfoList[1:]
    ]
    return result, images


def workflow_floor(reference, exposures, bin_size):
    """A lower bound on `lsst_workflow`: the same data movement, almost no compute.

    ``reference``, ``exposures``: as `lsst_workflow`'s. Every plane goes to JAX
    with ``jax.device_put`` (one copy at most: an aligned array of native byte
    order is aliased, which only lowers the bound; an `Exposure` always owns a
    copy), then one compiled program reads each plane once and, per science
    exposure, forms the mean of
    ``ref - sci`` over the pixels unmasked in both, per ``bin_size`` cell, as a
    piecewise-constant model (no clipping, no ``diffImVar``, no fit, no
    interpolation), writes the matched image ``sci + model`` and the model image
    into fresh buffers (what ``task.run`` returns), and the models are read back
    with ``np.asarray`` (what ``getImage()`` gives). Any config of the task does
    at least this much. Returns the model images.
    """
    import jax

    def to_jax(a):  # native byte order first (astropy's big-endian planes: one copy)
        return jax.device_put(np.asarray(a, a.dtype.newbyteorder("=")))

    planes = [to_jax(a) for a in reference]
    scis = [[to_jax(a) for a in planes_i] for planes_i in exposures]
    _, models, _ = _floor_program(bin_size)(planes, scis)
    return [np.asarray(m) for m in models]


@functools.cache
def _floor_program(bin_size):
    """The compiled program of `workflow_floor`, one per cell size."""
    import jax
    import jax.numpy as jnp

    def cells(a):  # (H, W) → (H / b, b, W / b, b)
        h, w = a.shape
        return a.reshape(h // bin_size, bin_size, w // bin_size, bin_size)

    def program(reference, exposures):
        ref, ref_mask, ref_var = reference
        matched, models, variance_sums = [], [], []
        for sci, mask, var in exposures:
            usable = (mask | ref_mask) == 0
            total = cells(jnp.where(usable, ref - sci, 0)).sum((1, 3))
            count = cells(usable).sum((1, 3))
            level = total / jnp.maximum(count, 1)
            model = jnp.repeat(jnp.repeat(level, bin_size, 0), bin_size, 1)
            matched.append(sci + model)
            models.append(model)
            variance_sums.append((var + ref_var).sum())  # the variance planes read once
        return matched, models, variance_sums

    return jax.jit(program)


def memory_floor(ref_image, sci_image, sci_mask, sci_var, *, out):
    """Read the science image, mask and variance planes once, write ``out`` once.

    Exactly: ``np.add(sci_image, ref_image, out=out)`` (reads N image planes and
    the reference, writes N planes), ``np.bitwise_or.reduce(sci_mask, axis=0)``
    and ``np.add.reduce(sci_var, axis=0)`` (each reads N planes, writes one). The
    reference's mask/variance (one plane each) are left out. Returns the bytes
    moved.
    """
    np.add(sci_image, ref_image, out=out)
    np.bitwise_or.reduce(sci_mask, axis=0)
    np.add.reduce(sci_var, axis=0)
    return sci_image.nbytes + sci_mask.nbytes + sci_var.nbytes + out.nbytes


def image_floor(ref_image, sci_image, *, out):
    """``np.add(sci_image, ref_image, out=out)`` alone: the image planes only."""
    np.add(sci_image, ref_image, out=out)
    return sci_image.nbytes + out.nbytes


# ------------------------------------------------------------------------ measurement
def _status_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak resident memory added during a ``with`` block [bytes].

    Linux: VmHWM is reset on entry (``/proc/self/clear_refs``), then
    ``VmHWM(after) − VmRSS(before)``. Elsewhere: the ``ru_maxrss`` delta of
    ``resource.getrusage`` (which only sees a new all-time high). ``method`` says
    which was used.
    """

    def __enter__(self):
        self.method = "VmHWM" if _reset_peak_rss() and _status_kb("VmHWM") else "ru_maxrss"
        if self.method == "VmHWM":
            self._before = _status_kb("VmRSS") * 1024
        else:
            self._before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc):
        if self.method == "VmHWM":
            after = _status_kb("VmHWM") * 1024
        else:
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = max(after - self._before, 0)
        return False


def measure_memory(fn, *, trace=True):
    """Run ``fn()`` once; return ``(result, tracemalloc peak or None, peak-RSS delta, how)``."""
    if trace:
        tracemalloc.start()
        tracemalloc.reset_peak()
    with PeakRSS() as rss:
        result = fn()
    peak = None
    if trace:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return result, peak, rss.peak, rss.method


def time_runs(fn, repeats, *, sync=lambda r: r, max_total_s=60.0):
    """Wall times of up to ``repeats`` runs of ``sync(fn())`` (stops after ``max_total_s``).

    Also returns the largest peak-RSS delta seen in those runs [bytes]. The
    result of the previous run is dropped before the next, so it is not counted.
    """
    times, peak = [], 0
    t_start = time.perf_counter()
    for _ in range(repeats):
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            r = sync(fn())
            times.append(time.perf_counter() - t0)
        del r
        peak = max(peak, rss.peak)
        if time.perf_counter() - t_start > max_total_s:
            break
    return times, peak, rss.method
