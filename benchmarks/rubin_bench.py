"""Time per patch under ``pipetask`` vs a direct `MatchBackgroundsTask.run` call.

Needs the extra ``pip install ".[lsst]"``. Builds a demo repository
(`jaxmatch.rubin.demo.make_demo_repo`: P patches x V visits of S x S float32 warps),
then measures:

- ``direct``: `MatchBackgroundsTask.run` on one patch's warps (read with
  ``butler.get``) in this process: the first call (with compilation) and the
  median of warm calls;
- ``pipetask -j J``: the wall time of the whole ``pipetask run`` subprocess (start,
  graph building, workers, I/O), divided by P, and from each quantum's stored
  metadata the task's ``run`` time (its ``timeMethod`` record): the first quantum a
  worker runs pays the import-free part of the compilation, later ones do not, so
  ``first - later`` is the per-worker compilation cost;
- the same with ``JAX_COMPILATION_CACHE_DIR`` (JAX's persistent cache) shared by
  the workers: a first run fills the cache, a second run reads it.

Usage: ``python benchmarks/rubin_bench.py [--quick] [--patches P] [--visits V]
[--size S] [--jobs J] [--json out.json]``. The numbers depend on the machine's
load: report it with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path


def _last(value):
    """timeMethod stores its records as arrays (one entry per call)."""
    return value[-1] if isinstance(value, list) else value


def _run_seconds(metadata) -> float:
    task = metadata["matchBackgrounds"]
    start = datetime.fromisoformat(_last(task["runStartUtc"]))
    end = datetime.fromisoformat(_last(task["runEndUtc"]))
    return (end - start).total_seconds()


def _quanta(butler, patches, band="r"):
    """(patch, start time, task run seconds) of every quantum, in start order."""
    out = []
    for patch in range(patches):
        md = butler.get(
            "matchBackgrounds_metadata",
            instrument="SimCam",
            skymap="jaxmatch_demo",
            tract=0,
            patch=patch,
            band=band,
        )
        start = _last(md["matchBackgrounds"]["runStartUtc"])
        out.append((patch, start, _run_seconds(md)))
    return sorted(out, key=lambda q: q[1])


def _pipetask(root, jobs, config, output, env_extra=None):
    from lsst.daf.butler import Butler

    from jaxmatch.rubin.demo import pipetask_command

    cmd = pipetask_command(root, jobs=jobs, config=config, output=output)
    env = dict(os.environ, **(env_extra or {}))
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError((done.stdout + done.stderr)[-3000:])
    butler = Butler.from_config(str(root), collections=output)
    return wall, _quanta(butler, len(butler.query_datasets("matchBackgrounds_metadata")))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 patches x 3 visits of 64^2")
    parser.add_argument("--patches", type=int, default=4)
    parser.add_argument("--visits", type=int, default=6)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="warm direct calls")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.patches, args.visits, args.size = 2, 3, 64

    from lsst.daf.butler import Butler

    from jaxmatch import MatchBackgroundsConfig, MatchBackgroundsTask
    from jaxmatch.rubin.demo import INPUT_COLLECTION, make_demo_repo

    bin_size = max(args.size // 8, 8)
    config = {"binSize": bin_size}
    results: dict = dict(
        patches=args.patches,
        visits=args.visits,
        size=args.size,
        jobs=args.jobs,
        binSize=bin_size,
        loadavg_start=os.getloadavg()[0],
        cpus=os.cpu_count(),
    )
    with tempfile.TemporaryDirectory(prefix="jaxmatch-rubin-bench-") as tmp:
        root = Path(tmp) / "repo"
        make_demo_repo(root, patches=args.patches, visits=args.visits, size=args.size)
        butler = Butler.from_config(str(root), collections=INPUT_COLLECTION)
        refs = sorted(
            butler.query_datasets("deepCoadd_directWarp", where="patch = 0"),
            key=lambda r: r.dataId["visit"],
        )
        warps = [butler.get(r) for r in refs]
        task = MatchBackgroundsTask(MatchBackgroundsConfig(**config))
        t0 = time.perf_counter()
        task.run(warps, "warp")
        first = time.perf_counter() - t0
        warm = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            task.run(warps, "warp")
            warm.append(time.perf_counter() - t0)
        results["direct"] = dict(first_call_s=first, warm_call_s=statistics.median(warm))
        print(f"direct call, one patch: first {first:.2f} s, warm {statistics.median(warm):.3f} s")

        runs = [("j1", 1, None), (f"j{args.jobs}", args.jobs, None)]
        cache = Path(tmp) / "jax-cache"
        runs += [
            (f"j{args.jobs}_cache_fill", args.jobs, {"JAX_COMPILATION_CACHE_DIR": str(cache)}),
            (f"j{args.jobs}_cache_hit", args.jobs, {"JAX_COMPILATION_CACHE_DIR": str(cache)}),
        ]
        for name, jobs, env in runs:
            wall, quanta = _pipetask(root, jobs, config, f"bench/{name}", env)
            run_times = [q[2] for q in quanta]
            results[name] = dict(
                wall_s=wall,
                wall_per_patch_s=wall / args.patches,
                task_run_s=run_times,
            )
            if jobs == 1 and len(run_times) > 1:
                later = statistics.median(run_times[1:])
                results[name]["compile_first_quantum_s"] = run_times[0] - later
                results[name]["warm_quantum_run_s"] = later
            print(
                f"pipetask -j {jobs} ({name}): {wall:.1f} s wall, {wall / args.patches:.1f} s "
                f"per patch; task run per quantum (start order): "
                + ", ".join(f"{t:.2f}" for t in run_times)
            )
    results["loadavg_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
