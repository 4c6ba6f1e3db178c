"""Run the benchmark of one data set (N, side, dtype) for one or more configs.

Called by `run.py` in a fresh process per data set (so peak-memory numbers start
from a clean process and a crash or timeout loses one case only):

    python benchmarks/worker.py --n 4 --side 512 --dtype float32 \
        --configs spline-natural,cheb6 --result /tmp/x.json

For each config, in this order, on the same arrays:

1. jaxmatch: first call (compile + run, timed apart), then ``repeats`` timed
   calls with ``jax.block_until_ready`` on the whole `MatchResult`;
2. NumPy baseline (`numpy_baseline.match_numpy`): one untimed call under
   tracemalloc (memory + the answer), then ``repeats`` timed calls;
3. photutils loop (`methods.photutils_loop`): the same;
4. SEP loop (`methods.sep_loop`): the same (when `sep` is installed);
5. with ``--workflow``: the LSST-API workflow (`methods.lsst_workflow`: NumPy
   arrays → Exposures → ``task.run`` → ``getImage()`` of each), first call apart,
   then ``repeats`` timed calls;

and once per data set the memory floor (`methods.memory_floor`) and, with
``--workflow``, the workflow floor (`methods.workflow_floor`: the LSST-API
workflow's data movement with next to no compute, a bound on what it can reach).

Started with ``JAXMATCH_RETAIN_FREED_MEMORY=1`` (jaxmatch then applies
`jaxmatch.retain_freed_memory` at import), every row's method ends in
" (retained)".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from configs import CONFIGS, GRID_BINS, make_config  # noqa: E402
from data import make_case  # noqa: E402
from methods import (  # noqa: E402
    image_floor,
    lsst_workflow,
    measure_memory,
    memory_floor,
    photutils_loop,
    sep_loop,
    time_runs,
    workflow_floor,
)
from numpy_baseline import match_numpy  # noqa: E402

import jaxmatch  # noqa: E402
from jaxmatch._allocator import applied_from_environment as RETAINED  # noqa: E402

N_CHECK = 4  # exposures used for the accuracy checks


def _truth_rms(case, model_of, n_check):
    """RMS over good pixels of (model - true background difference), first exposures [ADU]."""
    sq, cnt = 0.0, 0
    for i in range(n_check):
        model = np.asarray(model_of(i), np.float64)
        good = np.isfinite(model) & np.isfinite(case.ref_image) & np.isfinite(case.sci_image[i])
        r = (model - case.truth_of(i))[good]
        sq += float(np.dot(r, r))
        cnt += r.size
    return math.sqrt(sq / max(cnt, 1))


def _xla_memory(ref, sci, config):
    """XLA's buffer assignment for the whole of ``match`` (compiled again under jit)."""
    try:
        f = jax.jit(lambda r, s: jaxmatch.match(r, s, config, raise_on_failure=False))
        ma = f.lower(ref, sci).compile().memory_analysis()
        return dict(
            xla_temp_bytes=int(ma.temp_size_in_bytes),
            xla_output_bytes=int(ma.output_size_in_bytes),
            xla_argument_bytes=int(ma.argument_size_in_bytes),
        )
    except Exception as e:  # noqa: BLE001 - memory analysis is optional
        return dict(xla_error=repr(e)[:200])


def _summary(times):
    return dict(
        times_s=times, median_s=statistics.median(times), min_s=min(times), n_runs=len(times)
    )


def run_config(case, name, args, pix):
    config = make_config(name, case.sci_image.shape[-1], args.bin_size)
    ref, sci = case.jax_exposures()
    bits_r, bits_s = ref.bitmask(config.badMaskPlanes), sci.bitmask(config.badMaskPlanes)
    n_check = min(case.n, N_CHECK)
    rows = []
    base = dict(
        config=name,
        config_fields=dict(
            usePolynomial=config.usePolynomial,
            order=config.order,
            interpStyle=config.interpStyle,
            gridStatistic=config.gridStatistic,
            binSize=config.binSize,
            numSigmaClip=config.numSigmaClip,
            numIter=config.numIter,
        ),
    )

    # 1. jaxmatch, batched.
    call = lambda: jaxmatch.match(ref, sci, config, raise_on_failure=False)  # noqa: E731
    t0 = time.perf_counter()
    first = jax.block_until_ready(call())
    first_s = time.perf_counter() - t0
    status = np.asarray(first.status)
    jax_model = lambda i: np.asarray(first.matched[i], np.float64) - case.sci_image[i]  # noqa: E731
    jax_truth = _truth_rms(case, jax_model, n_check)
    jax_models = [jax_model(i) for i in range(n_check)]
    first = None  # free the result before the timed runs
    times, rss, how = time_runs(
        call, args.repeats, sync=jax.block_until_ready, max_total_s=args.max_time
    )
    xla = _xla_memory(ref, sci, config) if args.xla_memory else {}
    jx = dict(
        base,
        method="jaxmatch",
        first_call_s=first_s,
        **xla,
        compile_s=max(first_s - statistics.median(times), 0.0),
        **_summary(times),
        rss_peak_bytes=rss,
        rss_method=how,
        tracemalloc_peak_bytes=None,
        status_ok=int((status == 0).sum()),
        truth_rms=jax_truth,
        **_bandwidth(case, statistics.median(times), args.peak_gb_s),
    )
    rows.append(jx)

    # 2. NumPy baseline (same algorithm).
    out = np.empty_like(case.sci_image)
    if not args.skip_numpy:

        def fn():
            return match_numpy(
                case.ref_image,
                case.ref_mask,
                case.ref_var,
                case.sci_image,
                case.sci_mask,
                case.sci_var,
                config,
                bits_r,
                bits_s,
                out=out,
            )

        t0 = time.perf_counter()
        res, tm_peak, rss0, how = measure_memory(fn)
        first_np = time.perf_counter() - t0
        np_truth = _truth_rms(
            case, lambda i: res["matched"][i].astype(np.float64) - case.sci_image[i], n_check
        )
        dmax = max(
            float(
                np.nanmax(
                    np.abs(
                        (res["matched"][i].astype(np.float64) - case.sci_image[i]) - jax_models[i]
                    )
                )
            )
            for i in range(n_check)
        )
        np_status = res["status"]
        res = None
        times, rss, how = time_runs(fn, args.repeats, max_total_s=args.max_time)
        rows.append(
            dict(
                base,
                method="numpy",
                first_call_s=first_np,
                compile_s=None,
                **_summary(times),
                rss_peak_bytes=max(rss, rss0),
                rss_method=how,
                tracemalloc_peak_bytes=tm_peak,
                status_ok=int((np_status == 0).sum()),
                truth_rms=np_truth,
                max_abs_model_diff_vs_jaxmatch=dmax,
            )
        )

    # 3. photutils loop.
    if not args.skip_photutils:

        def fn():
            return photutils_loop(
                case.ref_image,
                case.ref_mask,
                case.sci_image,
                case.sci_mask,
                config,
                bits_r,
                bits_s,
                out=out,
            )

        t0 = time.perf_counter()
        (matched, failed), tm_peak, rss0, how = measure_memory(fn)
        first_pu = time.perf_counter() - t0
        pu_truth = _truth_rms(
            case, lambda i: matched[i].astype(np.float64) - case.sci_image[i], n_check
        )
        pu_vs_jax = math.sqrt(
            np.mean(
                [
                    np.nanmean(
                        (matched[i].astype(np.float64) - case.sci_image[i] - jax_models[i]) ** 2
                    )
                    for i in range(n_check)
                ]
            )
        )
        matched = None
        times, rss, how = time_runs(fn, args.repeats, max_total_s=args.max_time)
        rows.append(
            dict(
                base,
                method="photutils",
                first_call_s=first_pu,
                compile_s=None,
                **_summary(times),
                rss_peak_bytes=max(rss, rss0),
                rss_method=how,
                tracemalloc_peak_bytes=tm_peak,
                status_ok=case.n - failed,
                truth_rms=pu_truth,
                rms_model_diff_vs_jaxmatch=pu_vs_jax,
            )
        )
    # 4. SEP loop.
    if not args.skip_sep and _has_sep():
        rows.append(
            _baseline_row(
                case, base, "sep", sep_loop, config, bits_r, bits_s, out, jax_models, n_check, args
            )
        )
    out = None

    # 5. The LSST-API workflow.
    if args.workflow:
        rows.append(_workflow_row(case, base, config, jax_models, n_check, args))
    for r in rows:
        r["mpix_per_s"] = pix / r["median_s"] / 1e6
        r["ratio_to_jaxmatch"] = r["median_s"] / jx["median_s"]
    return rows


def _has_sep() -> bool:
    try:
        import sep  # noqa: F401
    except ImportError:
        return False
    return True


def _baseline_row(case, base, method, loop, config, bits_r, bits_s, out, jax_models, n_check, args):
    """A per-exposure loop (photutils-like signature): memory, accuracy, times."""

    def fn():
        return loop(
            case.ref_image,
            case.ref_mask,
            case.sci_image,
            case.sci_mask,
            config,
            bits_r,
            bits_s,
            out=out,
        )

    t0 = time.perf_counter()
    (matched, failed), tm_peak, rss0, how = measure_memory(fn)
    first_s = time.perf_counter() - t0
    truth = _truth_rms(case, lambda i: matched[i].astype(np.float64) - case.sci_image[i], n_check)
    vs_jax = math.sqrt(
        np.mean(
            [
                np.nanmean((matched[i].astype(np.float64) - case.sci_image[i] - jax_models[i]) ** 2)
                for i in range(n_check)
            ]
        )
    )
    matched = None
    times, rss, how = time_runs(fn, args.repeats, max_total_s=args.max_time)
    return dict(
        base,
        method=method,
        first_call_s=first_s,
        compile_s=None,
        **_summary(times),
        rss_peak_bytes=max(rss, rss0),
        rss_method=how,
        tracemalloc_peak_bytes=tm_peak,
        status_ok=case.n - failed,
        truth_rms=truth,
        rms_model_diff_vs_jaxmatch=vs_jax,
    )


def _user_planes(case):
    """The reference's and each science exposure's ``(image, mask, variance)`` as
    plain NumPy copies: a user's arrays, not the buffers JAX already holds."""
    reference = tuple(np.array(a) for a in (case.ref_image, case.ref_mask, case.ref_var))
    exposures = [
        tuple(np.array(a[i]) for a in (case.sci_image, case.sci_mask, case.sci_var))
        for i in range(case.n)
    ]
    return reference, exposures


def _workflow_row(case, base, config, jax_models, n_check, args):
    """`methods.lsst_workflow` on plain NumPy copies of the inputs (a user's arrays:
    not the buffers JAX already holds), its first call (compilations) timed apart."""
    task = jaxmatch.MatchBackgroundsTask(config=config)
    reference, exposures = _user_planes(case)

    def fn():
        return lsst_workflow(task, reference, exposures)

    t0 = time.perf_counter()
    _, images = fn()
    first_s = time.perf_counter() - t0
    ok = sum(img is not None for img in images)
    truth = _truth_rms(case, lambda i: images[i], n_check)
    vs_jax = max(float(np.nanmax(np.abs(images[i] - jax_models[i]))) for i in range(n_check))
    images = None
    times, rss, how = time_runs(fn, args.repeats, max_total_s=args.max_time)
    return dict(
        base,
        method="lsst-api",
        first_call_s=first_s,
        compile_s=max(first_s - statistics.median(times), 0.0),
        **_summary(times),
        rss_peak_bytes=rss,
        rss_method=how,
        tracemalloc_peak_bytes=None,
        status_ok=ok,
        truth_rms=truth,
        max_abs_model_diff_vs_jaxmatch=vs_jax,
    )


# Nominal peak memory bandwidth [GB/s] of some GPUs, by a substring of JAX's
# `device_kind` (vendor data sheets); `--peak-gb-s` overrides or supplies it.
PEAK_GB_S = {
    "H200": 4800.0,
    "H100 PCIe": 2000.0,
    "H100": 3350.0,  # SXM, HBM3
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100": 1555.0,  # 40 GB
    "L4": 300.0,
    "V100": 900.0,
}


def _bandwidth(case, seconds, peak_gb_s=None):
    """jaxmatch's effective bandwidth: the bytes a matcher must move at least (every
    science and reference plane read once, the matched image written once) over its
    time, and that as a fraction of the device's peak where the peak is known."""
    planes = (case.sci_image, case.sci_mask, case.sci_var, case.ref_image, case.ref_mask)
    nbytes = sum(a.nbytes for a in planes) + case.ref_var.nbytes + case.sci_image.nbytes
    device = jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    if peak_gb_s is None and device.platform == "gpu":
        peak_gb_s = next((v for k, v in PEAK_GB_S.items() if k in kind), None)
    gb_per_s = nbytes / seconds / 1e9
    return dict(
        device=f"{device.platform}: {kind}",
        bytes_moved=nbytes,
        gb_per_s=gb_per_s,
        peak_gb_per_s=peak_gb_s,
        peak_fraction=None if peak_gb_s is None else gb_per_s / peak_gb_s,
    )


def run_floor(case, args, pix):
    out = np.empty_like(case.sci_image)
    rows = []
    for method, fn in (
        (
            "floor",
            lambda: memory_floor(
                case.ref_image, case.sci_image, case.sci_mask, case.sci_var, out=out
            ),
        ),
        ("floor-image", lambda: image_floor(case.ref_image, case.sci_image, out=out)),
    ):
        nbytes, tm_peak, rss0, how = measure_memory(fn)  # also the warm-up
        times, rss, how = time_runs(fn, max(args.repeats, 3), max_total_s=args.max_time)
        s = _summary(times)
        rows.append(
            dict(
                config="-",
                method=method,
                compile_s=None,
                **s,
                bytes_moved=nbytes,
                gb_per_s=nbytes / s["median_s"] / 1e9,
                rss_peak_bytes=max(rss, rss0),
                rss_method=how,
                tracemalloc_peak_bytes=tm_peak,
                mpix_per_s=pix / s["median_s"] / 1e6,
            )
        )
    if args.workflow:
        rows += _workflow_floor_rows(case, args, pix)
    return rows


def _workflow_floor_rows(case, args, pix):
    """`methods.workflow_floor` on plain NumPy copies of the inputs, as the workflow
    row gets them; its first call (compilation) untimed. Where the cell size
    does not divide the side (the floor's model is whole cells): no row."""
    side = case.sci_image.shape[-1]
    bin_size = args.bin_size or max(side // GRID_BINS, 1)
    if side % bin_size or case.sci_image.shape[-2] % bin_size:
        return []
    reference, exposures = _user_planes(case)

    def fn():
        return workflow_floor(reference, exposures, bin_size)

    fn()
    times, rss, how = time_runs(fn, max(args.repeats, 3), max_total_s=args.max_time)
    s = _summary(times)
    # Planes read once (17 images, masks, variances), 2 N planes written, N read back.
    nbytes = sum(a.nbytes for a in reference) + sum(a.nbytes for e in exposures for a in e)
    nbytes += 3 * case.sci_image.nbytes
    return [
        dict(
            config="-",
            method="workflow-floor",
            compile_s=None,
            **s,
            bytes_moved=nbytes,
            gb_per_s=nbytes / s["median_s"] / 1e9,
            rss_peak_bytes=rss,
            rss_method=how,
            tracemalloc_peak_bytes=None,
            mpix_per_s=pix / s["median_s"] / 1e6,
        )
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description="one benchmark data set (see run.py)")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--side", type=int, required=True)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--configs", default="spline-natural")
    ap.add_argument("--bin-size", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--max-time",
        type=float,
        default=60.0,
        help="stop repeating a method after this many seconds",
    )
    ap.add_argument("--sim-max-side", type=int, default=2048)
    ap.add_argument("--skip-photutils", action="store_true")
    ap.add_argument("--skip-sep", action="store_true")
    ap.add_argument("--skip-numpy", action="store_true")
    ap.add_argument(
        "--workflow",
        action="store_true",
        help="also time the LSST-API workflow (arrays -> Exposures -> task.run -> getImage)",
    )
    ap.add_argument(
        "--no-xla-memory",
        dest="xla_memory",
        action="store_false",
        help="skip XLA's memory analysis (it compiles match a second time)",
    )
    ap.add_argument("--peak-gb-s", type=float, default=None)
    ap.add_argument("--result", required=True)
    args = ap.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; known: {sorted(CONFIGS)}")

    t0 = time.perf_counter()
    case = make_case(args.n, args.side, args.dtype, sim_max_side=args.sim_max_side)
    case.jax_exposures()
    data_s = time.perf_counter() - t0
    pix = args.n * args.side * args.side
    head = dict(
        n=args.n,
        side=args.side,
        dtype=args.dtype,
        pixels=pix,
        data=case.source,
        data_s=data_s,
        load_before=os.getloadavg(),
    )
    rows = [dict(head, **r) for r in run_floor(case, args, pix)]
    Path(args.result).write_text(json.dumps(rows))
    for name in args.configs.split(","):
        rows += [dict(head, **r) for r in run_config(case, name, args, pix)]
        Path(args.result).write_text(json.dumps(rows))  # partial results survive a timeout
    for r in rows:
        r["load_after"] = os.getloadavg()
        r["retained_freed_memory"] = RETAINED
        if RETAINED:  # JAXMATCH_RETAIN_FREED_MEMORY=1: jaxmatch.retain_freed_memory() applied
            r["method"] += " (retained)"
    Path(args.result).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
