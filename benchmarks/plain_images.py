"""Model error of ``jaxmatch match`` on plain images (no mask planes), against the truth.

The simulated patch (`jaxmatch.simulate_patch`: stars, galaxies, per-exposure
backgrounds) is written as plain single-image FITS files (the image only: no mask,
no variance), matched with ``jaxmatch match --ref`` the first file, and each fitted
model compared with the true background difference. Reported: the mean over the
science exposures of RMS(model − truth) [ADU], for the MEAN and MEANCLIP bin
statistics, without (``--no-detect``) and with source detection, and for the same
images with the simulator's own masks (LSST layout) as the best case.

Usage::

    python benchmarks/plain_images.py --size 256 --exposures 4 --bin-size 64
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from astropy.io import fits

    from jaxmatch import Exposure, simulate_patch
    from jaxmatch.cli import main as jaxmatch
    from jaxmatch.io import readModel, writeExposure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--exposures", type=int, default=4)
    parser.add_argument("--bin-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    patch = simulate_patch(args.exposures, (args.size, args.size), seed=args.seed)
    sigma = float(np.sqrt(np.median(patch.variances[0])))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        plain, masked = [], []
        for i in range(args.exposures):
            plain.append(folder / f"plain{i}.fits")
            fits.PrimaryHDU(patch.images[i].astype(np.float32)).writeto(plain[-1])
            masked.append(folder / f"lsst{i}.fits")
            exposure = Exposure(
                patch.images[i].astype(np.float32),
                patch.masks[i],
                patch.variances[i].astype(np.float32),
                mask_planes=patch.mask_planes,
            )
            writeExposure(exposure, masked[-1])
        print(
            f"{args.exposures} exposures of {args.size}^2, binSize {args.bin_size}, "
            f"noise sigma {sigma:.2f} ADU; RMS(model - truth) [ADU], mean over exposures"
        )
        for statistic in ("MEAN", "MEANCLIP"):
            for label, files, detect in (
                ("plain, --no-detect", plain, "--no-detect"),
                ("plain, detection", plain, "--detect"),
                ("simulator masks", masked, "--no-detect"),
            ):
                out = folder / f"out_{statistic}_{label.replace(' ', '').replace(',', '_')}"
                command = ["match", *map(str, files), "--out", str(out), "--ref", str(files[0])]
                command += ["--set", f"binSize={args.bin_size}", "--no-progress", detect]
                command += ["--set", f"gridStatistic={statistic}"]
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(
                    io.StringIO()
                ):
                    status = jaxmatch(command)
                errors = []
                for i in range(1, args.exposures):
                    truth = patch.backgrounds[0] - patch.backgrounds[i]
                    stem = files[i].name.replace(".fits", "")
                    model = np.asarray(readModel(out / f"{stem}.model.fits").getImage())
                    errors.append(float(np.sqrt(np.mean((model - truth) ** 2))))
                print(
                    f"  {statistic:8s} {label:20s} {np.mean(errors):8.3f}  "
                    f"(worst {np.max(errors):.3f}, exit {status})"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
