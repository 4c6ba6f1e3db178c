"""Survey throughput: patches per minute against the number of Dask workers.

Writes ``--patches`` simulated patches (``--exposures`` float32 exposures of
``--side``² each, `jaxmatch.simulate_patch`, LSST multi-extension FITS) and times:

- ``match cold``: ``python -m jaxmatch match`` per patch in a fresh process (what a
  shell loop over patches costs: JAX import and compilation every time), on the
  first ``--cold`` patches;
- ``match warm``: `jaxmatch.cli.main(["match", ...])` per patch in this process,
  after a first patch that compiled (the floor a survey worker can reach);
- ``survey wN``: `jaxmatch.survey.run_survey` on a `LocalCluster` of N single-thread
  worker processes (``--workers``, default 1 2): the cluster start, a first run
  (every worker compiles), then a second run of the same patches into a new folder
  (warm workers). Patches per minute are those of the warm run; the overhead per
  patch is the warm survey's wall time per patch (with one worker) minus
  ``match warm``'s.

Every run uses the same options (``--set binSize=32``, NATURAL_SPLINE, MEANCLIP).

    python benchmarks/survey_bench.py --quick
    python benchmarks/survey_bench.py --patches 8 --exposures 8 --side 512 --out survey.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OPTIONS = ["--set", "binSize=32", "--set", "interpStyle=NATURAL_SPLINE"]


def write_patches(root: Path, patches: int, exposures: int, side: int) -> list[Path]:
    """``patches`` folders of ``exposures`` simulated float32 exposures each."""
    from jaxmatch import Exposure, simulate_patch
    from jaxmatch.io import writeExposure

    dirs = []
    for p in range(patches):
        folder = root / f"patch{p:03d}"
        folder.mkdir(parents=True)
        sim = simulate_patch(exposures, (side, side), seed=p)
        for i in range(exposures):
            exposure = Exposure(
                sim.images[i].astype(np.float32),
                sim.masks[i],
                sim.variances[i].astype(np.float32),
                mask_planes=sim.mask_planes,
            )
            writeExposure(exposure, folder / f"visit{i:03d}.fits")
        dirs.append(folder)
    return dirs


def match_argv(folder: Path, out: Path) -> list[str]:
    files = sorted(str(p) for p in folder.glob("*.fits"))
    return ["match", *files, "--out", str(out / folder.name), *OPTIONS]


def time_match_cold(dirs: list[Path], out: Path) -> list[float]:
    """Wall time of ``python -m jaxmatch match`` per patch, each in a new process."""
    times = []
    for folder in dirs:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "jaxmatch", *match_argv(folder, out)],
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - start)
    return times


def time_match_warm(dirs: list[Path], out: Path) -> tuple[float, list[float]]:
    """(first patch, later patches) wall times of the match command in this process."""
    import contextlib
    import io

    from jaxmatch.cli import main

    times = []
    for folder in dirs:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = main(match_argv(folder, out))
        assert code == 0, folder
        times.append(time.perf_counter() - start)
    return times[0], times[1:]


def time_survey(dirs: list[Path], out: Path, workers: int) -> dict:
    """Cluster start, a cold and a warm survey run on ``workers`` processes."""
    from distributed import Client, LocalCluster

    from jaxmatch.survey import run_survey

    start = time.perf_counter()
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            worker_dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": False},
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        started = time.perf_counter()
        runs = []
        for name in ("cold", "warm"):
            t0 = time.perf_counter()
            table = run_survey(dirs, out / f"w{workers}-{name}", client=client, options=OPTIONS)
            runs.append(time.perf_counter() - t0)
            assert set(table["patch_status"]) == {"ok"}, name
        per_patch = dict(zip(table["patch"], table["patch_seconds"]))
    return dict(
        workers=workers,
        cluster_start_s=started - start,
        cold_s=runs[0],
        warm_s=runs[1],
        patches_per_min=60 * len(dirs) / runs[1],
        warm_task_median_s=statistics.median(per_patch.values()),
        warm_task_sum_s=sum(per_patch.values()),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=8)
    parser.add_argument("--exposures", type=int, default=8)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cold", type=int, default=2, help="patches timed as cold processes")
    parser.add_argument("--quick", action="store_true", help="8 patches of 4 x 256²")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.patches, args.exposures, args.side = 8, 4, 256
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dirs = write_patches(root / "in", args.patches, args.exposures, args.side)
        cold = time_match_cold(dirs[: args.cold], root / "cold")
        first, warm = time_match_warm(dirs, root / "warm")
        surveys = [time_survey(dirs, root, w) for w in args.workers]
    warm_patch = statistics.median(warm)
    result = dict(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        machine=f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        patches=args.patches,
        exposures=args.exposures,
        side=args.side,
        match_cold_s=cold,
        match_first_in_process_s=first,
        match_warm_s=warm_patch,
        surveys=surveys,
    )
    print(
        f"{args.patches} patches x {args.exposures} exposures x {args.side}² float32, "
        f"{result['machine']}"
    )
    print(f"  jaxmatch match, new process per patch : {statistics.mean(cold):7.2f} s/patch")
    print(f"  jaxmatch match, in process, 1st patch : {first:7.2f} s (compiles)")
    print(
        f"  jaxmatch match, in process, warm      : {warm_patch:7.3f} s/patch "
        f"({60 / warm_patch:.1f} patches/min)"
    )
    for s in surveys:
        print(
            f"  survey, {s['workers']} worker(s): start {s['cluster_start_s']:.1f} s, "
            f"cold run {s['cold_s']:.1f} s, warm run {s['warm_s']:.2f} s = "
            f"{s['patches_per_min']:.1f} patches/min (task median {s['warm_task_median_s']:.3f} s)"
        )
    one = next((s for s in surveys if s["workers"] == 1), None)
    if one is not None:
        overhead = one["warm_s"] / args.patches - warm_patch
        outside = (one["warm_s"] - one["warm_task_sum_s"]) / args.patches
        inside = one["warm_task_median_s"] - warm_patch
        result.update(overhead_per_patch_s=overhead, outside_tasks_per_patch_s=outside)
        print(
            f"  survey overhead per patch (1 worker, warm, vs match in process): {overhead:.3f} s"
            f" = {outside:.3f} s outside the tasks (client, scheduler, the run's fixed cost"
            f" spread over the patches) + {inside:.3f} s inside (task median - match warm)"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
