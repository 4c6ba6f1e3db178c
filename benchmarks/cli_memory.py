"""Peak memory of ``jaxmatch match`` on many exposures, as a function of their number.

Writes N simulated exposures of S x S pixels (LSST layout, float32: image, mask,
variance = 12 bytes per pixel) into a scratch folder, runs ``python -m jaxmatch
match`` on them as a subprocess and reports the child's peak resident memory
(``ru_maxrss``) and wall time, for each N given. Memory that does not grow with N
is the bound the chunked command line promises: about

    baseline (Python + JAX + compiled code)
    + (chunk_size + 1) exposures of S² pixels held as Exposure (12 bytes/pixel)
    + the engine's buffers for one chunk

With ``--task``: the same for `MatchBackgroundsTask.run` on N in-memory
exposures (simulated in the child process, float32), with ``task.chunkSize`` =
``--chunk-size`` and with one call (``task.chunkSize = None``). Its bound grows with N by
what ``run`` returns and is given (the N exposures, matched images and model
images); chunking removes the engine's N-sized working set on top of that.

With ``--reads``: the time to read one file of ``--size``² (bytes from the page
cache, FITS decoding, the Exposure), what a second read of a file costs.

Usage::

    python benchmarks/cli_memory.py --size 1024 --counts 4 8 16 --chunk-size 4
    python benchmarks/cli_memory.py --size 2048 --counts 16 64          # the issue's target
    python benchmarks/cli_memory.py --task --size 1024 --counts 16 32 --chunk-size 16
    python benchmarks/cli_memory.py --reads --size 2048

Results are printed as a table and, with --json, written to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_inputs(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """``count`` exposures of ``size²`` pixels: sky + gradient + noise + a few stars."""
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    paths = []
    for i in range(count):
        path = folder / f"exp{i:03d}.fits"
        paths.append(path)
        if path.exists():
            continue
        sky = 1000 + 30 * rng.normal() + 20 * rng.normal() * xx + 20 * rng.normal() * yy
        image = (sky + rng.normal(0, 10, (size, size))).astype(np.float32)
        mask = np.zeros((size, size), np.int32)
        variance = np.full((size, size), 100.0, np.float32)
        header = fits.Header()
        for name, bit in (("BAD", 0), ("SAT", 1), ("INTRP", 2), ("CR", 3), ("EDGE", 4)):
            header[f"MP_{name}"] = bit
        for name, bit in (("DETECTED", 5), ("DETECTED_NEGATIVE", 6), ("SUSPECT", 7)):
            header[f"HIERARCH MP_{name}"] = bit
        header["MP_NO_DATA"] = 8
        fits.HDUList(
            [
                fits.PrimaryHDU(),
                fits.ImageHDU(image, name="IMAGE"),
                fits.ImageHDU(mask, header=header, name="MASK"),
                fits.ImageHDU(variance, name="VARIANCE"),
            ]
        ).writeto(path)
    return paths


def run_once(paths: list[Path], out: Path, chunk_size: int, extra: list[str]) -> dict:
    """Run the command line in a fresh process; its peak RSS [MiB] and wall time [s]."""
    code = (
        "import resource, sys; from jaxmatch.cli import main; status = main(sys.argv[1:]); "
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
        "sys.exit(status)"
    )
    args = ["match", *map(str, paths), "--out", str(out), "--chunk-size", str(chunk_size)]
    args += ["--no-progress", *extra]
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise RuntimeError(f"jaxmatch match failed ({run.returncode}):\n{run.stderr[-2000:]}")
    line = next(x for x in run.stderr.splitlines() if x.startswith("MAXRSS"))
    peak_kib = int(line.split()[1])  # Linux: KiB
    return dict(peak_mib=peak_kib / 1024, wall_s=wall)


_TASK_CODE = """
import resource, sys, time
import numpy as np
from jaxmatch import Exposure, MatchBackgroundsConfig, MatchBackgroundsTask
count, size, chunk = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
chunk = None if chunk == "none" else int(chunk)
rng = np.random.default_rng(0)
yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
exposures = []
for i in range(count):
    sky = 1000 + 30 * rng.normal() + 20 * rng.normal() * xx + 20 * rng.normal() * yy
    image = (sky + rng.normal(0, 10, (size, size))).astype(np.float32)
    exposures.append(Exposure(image, None, np.full((size, size), 100.0, np.float32)))
del sky, image
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
task = MatchBackgroundsTask(MatchBackgroundsConfig())
task.chunkSize = chunk
result = task.run(exposures, "exposure", refExpDataRef=exposures[0])
assert all(i.backgroundModel is not None for i in result.backgroundInfoList[1:])
wall = time.perf_counter() - t0
print("MAXRSS", base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, wall, file=sys.stderr)
"""


def run_task(count: int, size: int, chunk_size: int | None) -> dict:
    """`MatchBackgroundsTask.run` in a fresh process: peak RSS before and after [MiB]."""
    chunk = "none" if chunk_size is None else str(chunk_size)
    run = subprocess.run(
        [sys.executable, "-c", _TASK_CODE, str(count), str(size), chunk],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise RuntimeError(f"task.run failed ({run.returncode}):\n{run.stderr[-2000:]}")
    line = next(x for x in run.stderr.splitlines() if x.startswith("MAXRSS"))
    _, before, after, wall = line.split()
    return dict(inputs_peak_mib=int(before) / 1024, peak_mib=int(after) / 1024, wall_s=float(wall))


def time_reads(size: int, repeat: int = 5) -> dict:
    """Seconds to read one LSST-layout file of ``size``² (page cache warm): bytes,
    decoding and the Exposure, as ``jaxmatch match`` reads a file again."""
    from jaxmatch._fitsfile import open_fits, read_bytes, read_slot, scan_slots

    with tempfile.TemporaryDirectory() as scratch:
        (path,) = write_inputs(Path(scratch), 1, size)
        slot = scan_slots(path)[0]
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            data = read_bytes(path)
            with open_fits(path, data) as hdus:
                exposure = read_slot(hdus, slot, path)
            exposure.image.block_until_ready()
            times.append(time.perf_counter() - t0)
        return dict(size=size, file_mib=path.stat().st_size / 2**20, read_s=min(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side [pixels]")
    parser.add_argument("--counts", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--chunk-size", type=int, default=4)
    parser.add_argument("--folder", type=Path, help="scratch folder (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--set", action="append", default=[], help="passed to jaxmatch")
    parser.add_argument("--task", action="store_true", help="MatchBackgroundsTask.run instead")
    parser.add_argument("--reads", action="store_true", help="time one read of a file")
    args = parser.parse_args(argv)
    if args.reads:
        r = time_reads(args.size)
        print(f"{args.size}^2: one read of a {r['file_mib']:.0f} MiB file {r['read_s']:.3f} s")
        return 0
    if args.task:
        results = []
        for count in args.counts:
            for chunk in (args.chunk_size, None):
                r = run_task(count, args.size, chunk)
                r.update(count=count, size=args.size, chunk_size=chunk)
                results.append(r)
                print(
                    f"task.run N={count:4d}  {args.size}^2  chunkSize {chunk}: peak RSS "
                    f"{r['peak_mib']:8.1f} MiB (inputs built: {r['inputs_peak_mib']:8.1f} MiB), "
                    f"{r['wall_s']:6.1f} s",
                    flush=True,
                )
        if args.json:
            args.json.write_text(json.dumps(dict(cpu_count=os.cpu_count(), results=results)))
        return 0
    extra = [x for item in args.set for x in ("--set", item)]
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        paths = write_inputs(folder, max(args.counts), args.size)
        results = []
        for count in args.counts:
            out = folder / f"out{count}"
            r = run_once(paths[:count], out, args.chunk_size, extra)
            input_mib = count * args.size**2 * 12 / 2**20
            r.update(count=count, size=args.size, chunk_size=args.chunk_size, inputs_mib=input_mib)
            results.append(r)
            print(
                f"N={count:4d}  {args.size}^2  chunk {args.chunk_size}: peak RSS "
                f"{r['peak_mib']:8.1f} MiB (inputs {input_mib:8.1f} MiB), {r['wall_s']:6.1f} s",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(dict(cpu_count=os.cpu_count(), results=results), indent=2))
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
