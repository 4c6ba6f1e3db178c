"""jaxmatch benchmark suite: jaxmatch vs photutils vs NumPy vs the memory floor.

    python benchmarks/run.py [--quick] [--out results.json] [--sizes 512 1024]
                             [--n 1 4 16] [--dtypes float32 float64] [--configs ...]
    python benchmarks/run.py --headline --repeats 7 --out headline.json

For every case (N exposures of side × side pixels, a dtype, a config) it runs, in
one fresh process and on the same arrays (see worker.py):

- jaxmatch  `jaxmatch.match(ref, batch, config, raise_on_failure=False)`, compile
            (first call) apart, then the median of timed calls, block_until_ready;
- numpy     the same algorithm in vectorised NumPy/SciPy (numpy_baseline.py);
- photutils Background2D on ref - sci per exposure + sci + bkg.background;
- sep       sep.Background on ref - sci per exposure + sci + back() (C library);
- lsst-api  (--workflow / --headline) NumPy arrays -> Exposures -> task.run ->
            getImage() of each model (methods.lsst_workflow);
- floor     NumPy reading the science image, mask and variance planes once and
            writing the output once (methods.memory_floor);
- workflow-floor  (with lsst-api) the workflow's data movement with next to no
            compute (methods.workflow_floor): the most any workflow can reach;

then a "fit only" table (fit_only.py). ``--headline`` runs the LSST-path targets
(`HEADLINE`) and prints a summary of them from the min over repeats.

Without --quick and without selection flags it runs three sweeps:
NATURAL_SPLINE/MEANCLIP over N ∈ {1,4,16,64} × side ∈ {512,1024,2048,4096} in
float32 and N ∈ {1,16} in float64, and every named config
(configs.py) at N=16, 1024², float32 and float64. Any of --sizes/--n/--dtypes/--configs turns
that into the cross product of the given lists. Cases whose estimated memory
exceeds --max-mem-gib or whose pixel count exceeds --max-pixels are skipped and
listed with the reason.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from configs import CONFIGS  # noqa: E402

ITEMSIZE = {"float32": 4, "float64": 8}
# Resident bytes per pixel of N·H·W, beyond the interpreter: inputs (image,
# variance in dtype, int32 mask) + output + XLA's temporaries (its memory analysis:
# ~1 plane of dtype beyond the output for MEANCLIP, ~2 for MEDIAN) + the baselines'.
BYTES_PER_PIXEL = {"float32": 4 + 4 + 4 + 4 + 2 * 4 + 16, "float64": 8 + 4 + 8 + 8 + 2 * 8 + 32}


# --------------------------------------------------------------------------- machine
def machine_info():
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, v = line.split(":", 1)
            if k in ("MemTotal", "MemAvailable"):
                mem[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    versions = {}
    for mod in ("jax", "jaxlib", "numpy", "scipy", "photutils", "astropy", "equinox"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = None
    return dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        nproc=os.cpu_count(),
        cpu=cpu,
        mem_total_bytes=mem.get("MemTotal"),
        mem_available_bytes=mem.get("MemAvailable"),
        python=platform.python_version(),
        platform=platform.platform(),
        versions=versions,
        loadavg=os.getloadavg(),
    )


# ------------------------------------------------------------------------------ plan
# The headline (`--headline`): LSST's defaults and the LSST-API workflow against the
# photutils and SEP loops (N=16, 1024², float32), the same two with
# `jaxmatch.retain_freed_memory()` (opt-in, process-wide: its own worker, started with
# JAXMATCH_RETAIN_FREED_MEMORY=1; its rows' methods end in " (retained)"), and the
# engine against the memory floor at 16 × 2048² (LSST's defaults, NATURAL and AKIMA
# splines with MEANCLIP).
# Each entry: (N, side, dtype, configs, extra worker flags, extra worker environment).
HEADLINE = [
    (
        16,
        1024,
        "float32",
        [
            "lsst-default",
            "lsst-default-meanclip",
            "spline-natural",
            "spline-akima",
            "spline-natural-median",
        ],
        ["--workflow", "--skip-numpy"],
        {},
    ),
    (
        16,
        1024,
        "float32",
        ["lsst-default", "lsst-default-meanclip"],
        ["--workflow", "--skip-numpy", "--skip-photutils", "--skip-sep", "--no-xla-memory"],
        {"JAXMATCH_RETAIN_FREED_MEMORY": "1"},
    ),
    (
        16,
        2048,
        "float32",
        ["lsst-default", "spline-natural", "spline-akima"],
        ["--skip-numpy", "--skip-photutils", "--skip-sep"],
        {},
    ),
]


def plan_cases(args):
    """``[(n, side, dtype, [configs], [worker flags], {worker environment})]`` in run
    order."""
    selected = any(v is not None for v in (args.sizes, args.n, args.dtypes, args.configs))
    if args.headline:
        return [
            (n, side, dtype, list(cfgs), list(flags), dict(env))
            for n, side, dtype, cfgs, flags, env in HEADLINE
        ]
    if args.quick:
        sweeps = [
            dict(n=[1, 4], sizes=[512], dtypes=["float32"], configs=["spline-natural", "cheb6"])
        ]
    elif selected:
        sweeps = [
            dict(
                n=args.n or [1, 4, 16],
                sizes=args.sizes or [512, 1024],
                dtypes=args.dtypes or ["float32"],
                configs=args.configs or ["spline-natural", "cheb6"],
            )
        ]
    else:
        sweeps = [
            dict(
                n=[1, 4, 16, 64],
                sizes=[512, 1024, 2048, 4096],
                dtypes=["float32"],
                configs=["spline-natural"],
            ),
            dict(
                n=[1, 16],
                sizes=[512, 1024, 2048, 4096],
                dtypes=["float64"],
                configs=["spline-natural"],
            ),
            dict(n=[16], sizes=[1024], dtypes=["float32", "float64"], configs=list(CONFIGS)),
        ]
    cases = {}
    for sw in sweeps:
        for dtype, side, n in itertools.product(sw["dtypes"], sw["sizes"], sw["n"]):
            cfgs = cases.setdefault((n, side, dtype), [])
            cfgs += [c for c in sw["configs"] if c not in cfgs]
    flags = ["--workflow"] if args.workflow else []
    return [(n, side, dtype, cfgs, flags, {}) for (n, side, dtype), cfgs in cases.items()]


def skip_reason(n, side, dtype, args, mem_available):
    pix = n * side * side
    need = pix * BYTES_PER_PIXEL[dtype]
    limit = args.max_mem_gib * 2**30 if args.max_mem_gib else 0.6 * (mem_available or 16 * 2**30)
    if need > limit:
        return (
            f"needs ~{need / 2**30:.1f} GiB (inputs + output + XLA temporaries, "
            f"{BYTES_PER_PIXEL[dtype]} B/pixel) > limit {limit / 2**30:.1f} GiB"
        )
    if pix > args.max_pixels:
        return (
            f"N·H·W = {pix / 2**20:.0f} Mpixel > --max-pixels {args.max_pixels / 2**20:.0f} "
            f"Mpixel (time: the NumPy/photutils baselines run at a few Mpixel/s here)"
        )
    return None


# ----------------------------------------------------------------------------- table
HEADER = (
    f"{'N':>3s} {'side':>5s} {'dtype':7s} {'config':22s} {'method':11s} {'compile s':>9s} "
    f"{'median s':>9s} {'min s':>8s} {'Mpix/s':>8s} {'x jaxmatch':>10s} {'peak MB':>17s}  check"
)


def _mb(b):
    return "-" if b is None else f"{b / 2**20:.0f}"


def format_row(r):
    method = r["method"].removesuffix(" (retained)")
    if method == "jaxmatch":
        if "xla_temp_bytes" in r:
            peak = (
                f"{_mb(r['xla_temp_bytes'] + r['xla_output_bytes'])}x/{_mb(r['rss_peak_bytes'])}r"
            )
        else:
            peak = f"{_mb(r['rss_peak_bytes'])}r"
        check = f"ok {r['status_ok']}/{r['n']}, truth rms {r['truth_rms']:.3f}"
        if r.get("gb_per_s") is not None:
            check += f", {r['gb_per_s']:.1f} GB/s"
            if r.get("peak_fraction") is not None:
                check += f" = {100 * r['peak_fraction']:.0f} % of peak"
    elif method == "lsst-api":
        peak = f"{_mb(r['rss_peak_bytes'])}r"
        check = (
            f"ok {r['status_ok']}/{r['n']}, truth rms {r['truth_rms']:.3f}, "
            f"|Δ| vs jax {r['max_abs_model_diff_vs_jaxmatch']:.1e}"
        )
    elif method in ("numpy", "photutils", "sep"):
        peak = f"{_mb(r['tracemalloc_peak_bytes'])}t/{_mb(r['rss_peak_bytes'])}r"
        check = f"ok {r['status_ok']}/{r['n']}, truth rms {r['truth_rms']:.3f}"
        if method == "numpy":
            check += f", |Δ| vs jax {r['max_abs_model_diff_vs_jaxmatch']:.1e}"
        else:
            check += f", rms Δ vs jax {r['rms_model_diff_vs_jaxmatch']:.2f}"
    else:
        peak = f"{_mb(r['tracemalloc_peak_bytes'])}t/{_mb(r['rss_peak_bytes'])}r"
        check = f"{r['gb_per_s']:.1f} GB/s"
    comp = "-" if r.get("compile_s") is None else f"{r['compile_s']:.2f}"
    ratio = r.get("ratio_to_jaxmatch")
    ratio = "-" if ratio is None else f"{ratio:.2f}"
    return (
        f"{r['n']:3d} {r['side']:5d} {r['dtype']:7s} {r['config']:22s} {r['method']:11s} "
        f"{comp:>9s} {r['median_s']:9.4f} {r['min_s']:8.4f} {r['mpix_per_s']:8.1f} {ratio:>10s} "
        f"{peak:>17s}  {check}"
    )


def table_rows(rows):
    """Rows in display order: per config, jaxmatch, numpy, photutils, then the floors."""
    out = []
    floors = [r for r in rows if "floor" in r["method"]]
    for cfg in dict.fromkeys(r["config"] for r in rows if r["config"] != "-"):
        jx = next(
            (r for r in rows if r["config"] == cfg and r["method"].startswith("jaxmatch")), None
        )
        for r in rows:
            if r["config"] == cfg:
                out.append(r)
        for f in floors:
            f2 = dict(f, config=cfg)
            f2["ratio_to_jaxmatch"] = f["median_s"] / jx["median_s"] if jx else None
            out.append(f2)
    return out


def _min_time(rows, side, config, method):
    for r in rows:
        if r["side"] == side and r["method"] == method and r["config"] in (config, "-"):
            return r["min_s"]
    return None


def _workflow_floor(rows, side=1024):
    """The least workflow floor at ``side`` over the workers (retained memory or not)."""
    times = [
        r["min_s"]
        for r in rows
        if r["side"] == side and r["method"].removesuffix(" (retained)") == "workflow-floor"
    ]
    return min(times, default=None)


def headline_summary(rows) -> list[str]:
    """The headline's targets, from the min over repeats of each method (same run)."""

    def ratio(a, b):
        return "-" if a is None or b is None else f"{a / b:.2f}"

    def sec(t):
        return "-" if t is None else f"{t:.4f}"

    wf_floor = _workflow_floor(rows)
    out = [
        "",
        "# Headline (min of repeats; ratios from this run): N=16, 1024², float32",
        f"# wf-floor: the LSST-API workflow's data movement with next to no compute "
        f"({sec(wf_floor)} s), so photutils/wff and sep/wff bound photutils/api and sep/api",
        f"{'config':22s} {'engine s':>9s} {'lsst-api s':>10s} {'photutils s':>11s} "
        f"{'sep s':>8s} {'floor s':>8s} {'photutils/api':>13s} {'sep/api':>8s} "
        f"{'photutils/eng':>13s} {'sep/eng':>8s} {'photutils/wff':>13s} {'sep/wff':>8s}",
    ]
    for cfg in dict.fromkeys(r["config"] for r in rows if r["side"] == 1024):
        if cfg == "-":
            continue
        t = {
            m: _min_time(rows, 1024, cfg, m)
            for m in ("jaxmatch", "lsst-api", "photutils", "sep", "floor")
        }
        out.append(
            f"{cfg:22s} {sec(t['jaxmatch']):>9s} {sec(t['lsst-api']):>10s} "
            f"{sec(t['photutils']):>11s} {sec(t['sep']):>8s} {sec(t['floor']):>8s} "
            f"{ratio(t['photutils'], t['lsst-api']):>13s} {ratio(t['sep'], t['lsst-api']):>8s} "
            f"{ratio(t['photutils'], t['jaxmatch']):>13s} {ratio(t['sep'], t['jaxmatch']):>8s} "
            f"{ratio(t['photutils'], wf_floor):>13s} {ratio(t['sep'], wf_floor):>8s}"
        )
    retained = [r for r in rows if r["side"] == 1024 and r["method"].endswith(" (retained)")]
    if retained:
        out += [
            "",
            "# The same with jaxmatch.retain_freed_memory() (its own worker; the baselines above)",
            f"{'config':22s} {'engine s':>9s} {'lsst-api s':>10s} {'photutils/api':>13s} "
            f"{'sep/api':>8s} {'api vs default':>14s} {'engine vs default':>17s}",
        ]
        for cfg in dict.fromkeys(r["config"] for r in retained if r["config"] != "-"):
            eng = _min_time(rows, 1024, cfg, "jaxmatch (retained)")
            api = _min_time(rows, 1024, cfg, "lsst-api (retained)")
            base = {m: _min_time(rows, 1024, cfg, m) for m in ("photutils", "sep", "lsst-api")}
            out.append(
                f"{cfg:22s} {sec(eng):>9s} {sec(api):>10s} {ratio(base['photutils'], api):>13s} "
                f"{ratio(base['sep'], api):>8s} {ratio(api, base['lsst-api']):>14s} "
                f"{ratio(eng, _min_time(rows, 1024, cfg, 'jaxmatch')):>17s}"
            )
    out += [
        "",
        "# Engine vs memory floor (min of repeats)",
        f"{'side':>5s} {'config':22s} {'engine s':>9s} {'floor s':>8s} {'engine/floor':>12s}",
    ]
    for side in sorted({r["side"] for r in rows}):
        for cfg in dict.fromkeys(r["config"] for r in rows if r["side"] == side):
            if cfg == "-":
                continue
            eng, floor = _min_time(rows, side, cfg, "jaxmatch"), _min_time(rows, side, cfg, "floor")
            out.append(
                f"{side:5d} {cfg:22s} {sec(eng):>9s} {sec(floor):>8s} {ratio(eng, floor):>12s}"
            )
    out += ["", "# Defaults against the headline config (engine, min of repeats)"]
    for side in sorted({r["side"] for r in rows}):
        for slow, fast, what in (
            ("spline-akima", "spline-natural", "AKIMA / NATURAL (MEANCLIP), target <= 1.2"),
            (
                "spline-natural-median",
                "spline-natural",
                "MEDIAN / MEANCLIP (NATURAL), target <= 1.5",
            ),
        ):
            a, b = _min_time(rows, side, slow, "jaxmatch"), _min_time(rows, side, fast, "jaxmatch")
            if a is not None and b is not None:
                out.append(f"{side:5d} {what}: {a:.4f} / {b:.4f} = {a / b:.2f}")
    return out


# ------------------------------------------------------------------------------ main
def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    ap.add_argument("--quick", action="store_true", help="N in {1,4}, 512², float32, 2 configs")
    ap.add_argument(
        "--headline",
        action="store_true",
        help="the LSST-path targets: LSST defaults, workflow, photutils, SEP, floor (see README)",
    )
    ap.add_argument("--out", default="results.json", help="JSON file to write")
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--n", type=int, nargs="+", default=None)
    ap.add_argument("--dtypes", nargs="+", choices=sorted(ITEMSIZE), default=None)
    ap.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None)
    ap.add_argument("--bin-size", type=int, default=None, help="default: side // 16")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method")
    ap.add_argument(
        "--peak-gb-s",
        type=float,
        default=None,
        help="the device's peak memory bandwidth [GB/s], for jaxmatch's fraction of it "
        "(default: known GPUs by name, none on CPU)",
    )
    ap.add_argument(
        "--max-time",
        type=float,
        default=45.0,
        help="stop repeating a method once its runs took this long [s]",
    )
    ap.add_argument("--max-pixels", type=int, default=1 << 26, help="skip larger N·H·W")
    ap.add_argument(
        "--max-mem-gib",
        type=float,
        default=None,
        help="skip cases estimated above this (default 60%% of MemAvailable)",
    )
    ap.add_argument("--case-timeout", type=float, default=900.0, help="per data set [s]")
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
        action="store_true",
        help="skip XLA's memory analysis (saves one compile per config)",
    )
    ap.add_argument("--no-fit-only", action="store_true")
    ap.add_argument(
        "--blas-threads",
        default="1",
        help="OPENBLAS/OMP/MKL threads in the workers (default 1; see README)",
    )
    ap.add_argument(
        "--xla-flags",
        default="",
        help="appended to XLA_FLAGS in the workers, e.g. "
        "--xla_cpu_enable_concurrency_optimized_scheduler=false (see README)",
    )
    args = ap.parse_args(argv)

    info = machine_info()
    cases = plan_cases(args)
    env = dict(os.environ)
    env.pop("JAXMATCH_RETAIN_FREED_MEMORY", None)  # only the headline entry that asks for it
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.blas_threads)
    if args.xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    print(
        f"# jaxmatch benchmarks, {info['date']}; {info['nproc']} CPU x {info['cpu']}, "
        f"{(info['mem_total_bytes'] or 0) / 2**30:.1f} GiB RAM; jax {info['versions']['jax']}, "
        f"numpy {info['versions']['numpy']}, photutils {info['versions']['photutils']}; "
        f"BLAS threads {args.blas_threads}; "
        f"load avg {' '.join(f'{x:.1f}' for x in info['loadavg'])}"
    )
    print(
        "# peak MB: x = XLA temp+output buffers, r = peak-RSS delta (VmHWM), "
        "t = tracemalloc peak; 'x jaxmatch' = time / jaxmatch time"
    )
    result = dict(machine=info, args=vars(args), rows=[], skipped=[], fit_only=[], failed=[])
    out_path = Path(args.out)

    def save():
        out_path.write_text(json.dumps(result, indent=1, default=str))

    todo = []
    for n, side, dtype, cfgs, flags, worker_env in cases:
        why = skip_reason(n, side, dtype, args, info["mem_available_bytes"])
        if why:
            result["skipped"].append(dict(n=n, side=side, dtype=dtype, configs=cfgs, reason=why))
        else:
            todo.append((n, side, dtype, cfgs, flags, worker_env))
    if result["skipped"]:
        print("# skipped:")
        for s in result["skipped"]:
            print(f"#   N={s['n']:<3d} {s['side']}² {s['dtype']}: {s['reason']}")
    print(HEADER)
    t_all = time.perf_counter()
    for n, side, dtype, cfgs, flags, worker_env in todo:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            res_path = tmp.name
        cmd = [
            sys.executable,
            str(HERE / "worker.py"),
            "--n",
            str(n),
            "--side",
            str(side),
            "--dtype",
            dtype,
            "--configs",
            ",".join(cfgs),
            "--repeats",
            str(args.repeats),
            *(["--peak-gb-s", str(args.peak_gb_s)] if args.peak_gb_s else []),
            "--max-time",
            str(args.max_time),
            "--result",
            res_path,
        ]
        if args.bin_size:
            cmd += ["--bin-size", str(args.bin_size)]
        if args.skip_photutils:
            cmd += ["--skip-photutils"]
        if args.skip_sep:
            cmd += ["--skip-sep"]
        if args.skip_numpy:
            cmd += ["--skip-numpy"]
        if args.no_xla_memory:
            cmd += ["--no-xla-memory"]
        cmd += flags
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                env={**env, **worker_env},
                capture_output=True,
                text=True,
                timeout=args.case_timeout,
            )
            err = None if proc.returncode == 0 else proc.stderr[-2000:]
        except subprocess.TimeoutExpired:
            err = f"timeout after {args.case_timeout:.0f} s"
        rows = json.loads(Path(res_path).read_text() or "[]") if Path(res_path).exists() else []
        Path(res_path).unlink(missing_ok=True)
        for r in table_rows(rows):
            print(format_row(r), flush=True)
        result["rows"] += rows
        if err:
            result["failed"].append(dict(n=n, side=side, dtype=dtype, configs=cfgs, error=err))
            print(f"# N={n} {side}² {dtype}: FAILED: {err.strip().splitlines()[-1]}", flush=True)
        print(f"#   ({time.perf_counter() - t0:.0f} s for this data set)", flush=True)
        save()
        if err and err.startswith("timeout"):
            # A hung XLA CPU run (README, "Known issue") would hang every case: stop here.
            print(
                "# stopping after a timeout; if jaxmatch hung (0 % CPU), retry with "
                "--xla-flags=--xla_cpu_enable_concurrency_optimized_scheduler=false",
                flush=True,
            )
            break
    if not args.no_fit_only and not args.headline:
        fit_args = ["--n", "16", "--repeats", "3"]
        fit_args += (
            ["--grids", "4,8,16", "--orders", "4,8"]
            if args.quick
            else ["--grids", "4,8,16,32", "--orders", "4,6,8", "--max-rows", "4000"]
        )
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            fit_path = tmp.name
        proc = subprocess.run(
            [sys.executable, str(HERE / "fit_only.py"), *fit_args, "--out", fit_path],
            env=env,
            capture_output=True,
            text=True,
        )
        print()
        print(proc.stdout if proc.returncode == 0 else proc.stderr[-2000:])
        if proc.returncode == 0:
            result["fit_only"] = json.loads(Path(fit_path).read_text())
        Path(fit_path).unlink(missing_ok=True)
    if args.headline or args.workflow:
        summary = headline_summary(result["rows"])
        print("\n".join(summary), flush=True)
        result["headline"] = summary
    result["total_s"] = time.perf_counter() - t_all
    result["machine"]["loadavg_end"] = os.getloadavg()
    save()
    print(f"# wrote {out_path} ({result['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
