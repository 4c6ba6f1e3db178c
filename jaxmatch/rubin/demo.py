"""``jaxmatch lsst-demo``: simulated warps in a new butler repository, matched by ``pipetask``.

Steps: create a jaxmatch repository (`create_repo`), simulate ``--visits`` warps
of each of ``--patches`` patches (`jaxmatch.simulate_patch`, float32 like LSST's
``ExposureF``), write them as FITS and ingest them (`ingest_warps`) into the RUN
collection ``demo/warps``; run the real ``pipetask run -j J`` on the shipped
pipeline as a subprocess (output collection ``demo/matched``); read every model
and diagnostics record back with ``butler.get`` and print, per patch, the
diagnostics and the agreement with the simulated truth before and after matching
(RMS over pixels of the true background difference to the reference, and of that
difference minus the fitted model) [ADU].
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

INPUT_COLLECTION = "demo/warps"
OUTPUT_COLLECTION = "demo/matched"
_SKYMAP, _TRACT, _INSTRUMENT, _BAND = "jaxmatch_demo", 0, "SimCam", "r"


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the ``lsst-demo`` subcommand on the ``jaxmatch`` command's subparsers."""
    p = sub.add_parser(
        "lsst-demo",
        help="Rubin Gen3: simulated warps in a new butler repository, matched by pipetask",
        description="Create a butler repository with simulated warps of several patches, "
        "run `pipetask run` on jaxmatch's pipeline, and print the diagnostics and the "
        'before/after agreement per patch. Needs pip install "jaxmatch[lsst]".',
    )
    p.add_argument("--repo", type=Path, required=True, help="new repository directory")
    p.add_argument("--patches", type=int, default=2, help="number of patches (2)")
    p.add_argument("--visits", type=int, default=4, help="visits per patch (4)")
    p.add_argument("--jobs", "-j", type=int, default=1, help="pipetask processes (1)")
    p.add_argument("--size", type=int, default=128, help="warp side in pixels (128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--mode", choices=("REFERENCE", "GLOBAL"), default="REFERENCE", help="matchMode")
    # The core command's shared options are not used here; their defaults keep its
    # config parsing a no-op for this subcommand.
    p.set_defaults(func=_main, config=None, set=[], table=None, float64=False)
    return p


def _main(args, _config=None) -> int:
    for name in ("patches", "visits", "jobs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    if args.visits < 2:
        raise ValueError("--visits must be at least 2 (one is the reference)")
    if args.size < 32:
        raise ValueError("--size must be at least 32 pixels")
    run_demo(
        args.repo,
        patches=args.patches,
        visits=args.visits,
        jobs=args.jobs,
        size=args.size,
        seed=args.seed,
        mode=args.mode,
    )
    return 0


class PatchTruth(NamedTuple):
    """The simulated true backgrounds of one patch, ``(visits, H, W)`` [ADU]."""

    patch: int
    backgrounds: np.ndarray
    sigma: float


def make_demo_repo(repo, *, patches: int, visits: int, size: int, seed: int = 0):
    """Create ``repo`` with simulated warps; returns (butler, visit ids, [PatchTruth])."""
    from .. import Exposure, io, simulate_patch
    from .repo import WarpDataId, create_repo, ingest_warps

    butler = create_repo(repo)
    visit_ids = [1000 + v for v in range(visits)]
    truths, warps = [], []
    with tempfile.TemporaryDirectory(prefix="jaxmatch-warps-") as staging:
        for p in range(patches):
            sim = simulate_patch(visits, (size, size), seed=(seed, p))
            for v, visit in enumerate(visit_ids):
                warp = Exposure(
                    sim.images[v].astype(np.float32),
                    sim.masks[v],
                    sim.variances[v].astype(np.float32),
                    mask_planes=sim.mask_planes,
                )
                path = Path(staging) / f"warp_patch{p}_visit{visit}.fits"
                io.writeExposure(warp, path)
                data_id = WarpDataId(
                    _INSTRUMENT,
                    visit,
                    f"{_INSTRUMENT}-{_BAND}",
                    _BAND,
                    20260101 + v // 3,
                    _SKYMAP,
                    _TRACT,
                    p,
                )
                warps.append((path, data_id))
            sigma = float(np.sqrt(np.median(sim.variances[np.isfinite(sim.variances)])))
            truths.append(PatchTruth(p, sim.backgrounds, sigma))
        ingest_warps(butler, warps, run=INPUT_COLLECTION, transfer="copy", check=False)
    return butler, visit_ids, truths


def pipetask_command(
    repo, *, jobs: int = 1, config: dict[str, object] | None = None, output=OUTPUT_COLLECTION
) -> list[str]:
    """The ``pipetask run`` command line of the shipped pipeline on ``repo``."""
    from . import PIPELINE

    exe = shutil.which("pipetask", path=str(Path(sys.executable).parent)) or shutil.which(
        "pipetask"
    )
    if exe is None:
        raise RuntimeError('pipetask not found: pip install "jaxmatch[lsst]"')
    cmd = [
        exe,
        "run",
        "-b",
        str(repo),
        "-i",
        INPUT_COLLECTION,
        "-o",
        output,
        "-p",
        str(PIPELINE),
        "-j",
        str(jobs),
        "--register-dataset-types",
    ]
    for key, value in (config or {}).items():
        cmd += ["-c", f"matchBackgrounds:{key}={value}"]
    return cmd


def run_demo(repo, *, patches=2, visits=4, jobs=1, size=128, seed=0, mode="REFERENCE") -> list:
    """Run the whole demo (see the module docstring); returns the per-visit rows."""
    from . import require_lsst

    require_lsst()
    from lsst.daf.butler import Butler

    repo = Path(repo)
    t0 = time.perf_counter()
    _, visit_ids, truths = make_demo_repo(
        repo, patches=patches, visits=visits, size=size, seed=seed
    )
    t1 = time.perf_counter()
    bin_size = max(size // 8, 8)
    cmd = pipetask_command(repo, jobs=jobs, config={"binSize": bin_size, "matchMode": mode})
    print(
        f"jaxmatch lsst-demo: {patches} patches x {visits} visits of {size}x{size} in {repo} "
        f"({t1 - t0:.1f} s)\n$ {shlex.join(cmd)}",
        flush=True,
    )
    env = dict(os.environ)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    t2 = time.perf_counter()
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise RuntimeError(f"pipetask failed (exit {done.returncode}):\n{tail}")
    print(f"pipetask run -j {jobs}: {t2 - t1:.1f} s")
    butler = Butler.from_config(str(repo), collections=OUTPUT_COLLECTION)
    rows = read_results(butler, visit_ids, truths)
    _print(rows, truths)
    print(
        f"\nThe repository works with plain butler commands, e.g.\n"
        f"  butler query-datasets {shlex.quote(str(repo))} '*' --collections {OUTPUT_COLLECTION}"
    )
    return rows


def read_results(butler, visit_ids, truths) -> list[dict]:
    """Every visit's diagnostics and truth agreement, read back with ``butler.get``."""
    rows = []
    for truth in truths:
        for v, visit in enumerate(visit_ids):
            data_id = dict(
                instrument=_INSTRUMENT, visit=visit, skymap=_SKYMAP, tract=_TRACT, patch=truth.patch
            )
            diag = butler.get("deepCoadd_directWarp_jaxmatchDiagnostics", data_id)
            ref = visit_ids.index(diag["refVisit"])
            difference = truth.backgrounds[ref] - truth.backgrounds[v]
            row: dict[str, Any] = dict(
                diag, patch=truth.patch, before=float(np.sqrt(np.mean(difference**2)))
            )
            if diag["fitted"]:
                model = butler.get("deepCoadd_directWarp_jaxmatchBackground", data_id)
                residual = difference - np.asarray(model.getImage(), dtype=np.float64)
                row["after"] = float(np.sqrt(np.mean(residual**2)))
            else:
                row["after"] = None
            rows.append(row)
    return rows


def _print(rows, truths) -> None:
    def fmt(value, spec=".3f"):
        return "-" if value is None else format(value, spec)

    for truth in truths:
        print(f"\npatch {truth.patch} (noise sigma per pixel {truth.sigma:.2f} ADU)")
        print(
            f"  {'visit':>6} {'ref':>4} {'fitRMS':>9} {'matchedMSE':>11} {'diffImVar':>10} "
            f"{'before':>9} {'after':>9}"
        )
        patch_rows = [r for r in rows if r["patch"] == truth.patch]
        for r in patch_rows:
            print(
                f"  {r['visit']:>6} {'yes' if r['isReference'] else 'no':>4} "
                f"{fmt(r['fitRMS']):>9} {fmt(r['matchedMSE'], '.1f'):>11} "
                f"{fmt(r['diffImVar'], '.1f'):>10} {r['before']:>9.3f} {fmt(r['after']):>9}"
            )
        others = [r for r in patch_rows if not r["isReference"]]
        before = float(np.sqrt(np.mean([r["before"] ** 2 for r in others])))
        fitted = [r["after"] for r in others if r["after"] is not None]
        after = float(np.sqrt(np.mean(np.square(fitted)))) if fitted else float("nan")
        print(
            f"  background agreement with the reference (RMS, ADU): before {before:.3f}, "
            f"after {after:.3f} ({len(fitted)}/{len(others)} fitted)"
        )
