"""Peak memory of ``jaxmatch match`` on many exposures, as a function of their number.

Writes N simulated exposures of S x S pixels (LSST layout, float32: image, mask,
variance = 12 bytes per pixel) into a scratch folder, runs ``python -m jaxmatch
match`` on them as a subprocess and reports the child's peak resident memory
(``ru_maxrss``) and wall time, for each N given. Memory that does not grow with N
is the bound the chunked command line promises: about

    baseline (Python + JAX + compiled code)
    + (chunk_size + 1) exposures of S² pixels held as Exposure (12 bytes/pixel)
    + the engine's buffers for one chunk

Usage::

    python benchmarks/cli_memory.py --size 1024 --counts 4 8 16 --chunk-size 4
    python benchmarks/cli_memory.py --size 2048 --counts 16 64          # the issue's target

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side [pixels]")
    parser.add_argument("--counts", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--chunk-size", type=int, default=4)
    parser.add_argument("--folder", type=Path, help="scratch folder (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--set", action="append", default=[], help="passed to jaxmatch")
    args = parser.parse_args(argv)
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
