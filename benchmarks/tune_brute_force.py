"""The self-tuner against brute force over its whole search space, for either model
family.

Scene: the deep field of `tune_bench.deep_scene` plus, in every exposure, a wave of
one period across the image (``A sin(2π x/W + φ_i) cos(2π y/H + ψ_i)``, random
phases) whose differences a Chebyshev polynomial of order 6 cannot follow: its
least-squares floor at order 6 is ≈ 0.08 A per exposure, at order 8 ≈ 0.012 A.
``--wave`` sets A in units of the per-pixel noise σ (default: 0.6 for
``--family chebyshev``, where LSST's defaults then err by ≈ 0.09 σ; 0 for
``--family spline``: the plain deep field, on which LSST's spline defaults err by
≈ 0.1 σ).

Lengths scale with the image: at ``--size S`` the start config is LSST's default of
the family with its binSize scaled to the image,

- chebyshev: order 6 on S/8-pixel bins (binSize 128 at 1024²); the tuner's bin
  sizes are S/16 and S/8 (64 and 128 at 1024²: `CHEBYSHEV_BIN_SIZES`) × `ORDERS`;
- spline: ``MatchBackgroundsConfig()`` (AKIMA spline, MEAN, knot spacing 1) on
  S/4-pixel bins (binSize 256 at 1024²); the tuner's bin sizes are its default
  ladder `BIN_SIZES` limited to the image (cell size ≤ binSize ≤ S/3: 32–256 at
  1024², 32–128 at 512²), knot spacing 1.

Printed, in σ (worst exposure's RMS error of the fitted background difference vs the
truth):

- the start config (LSST's defaults);
- `autotune` with an unlimited budget (every discrete candidate), chosen without the
  truth, and its time;
- brute force: every setting of the same search space (each discrete candidate ×
  every λ of `ROUGHNESS_GRID` × every numSigmaClip of `CLIP_GRID`, MEANCLIP, and the
  start config), each fitted with `match` and scored *against the truth*, and its
  time; the tuner's pick relative to the best of them;
- the noise floor of the chosen basis (fitted to the noiseless truth).

Usage::

    python benchmarks/tune_brute_force.py --size 512        # 5 x 512² (~10 min, 2 cores)
    python benchmarks/tune_brute_force.py --size 1024 --json out.json
    python benchmarks/tune_brute_force.py --size 1024 --family spline --wave 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tune_bench import deep_scene, floor_error, truth_error  # noqa: E402

import jaxmatch as jm  # noqa: E402
from jaxmatch._autotune import (  # noqa: E402
    CLIP_GRID,
    ROUGHNESS_GRID,
    candidate_settings,
    choose_reference,
    default_cell_size,
)


def wave_scene(n, size, seed, wave_sigma):
    """`deep_scene` plus a one-period wave of ``wave_sigma`` σ in every exposure."""
    patch, batch = deep_scene(n, size, seed)
    sigma = float(np.sqrt(np.median(patch.variances[np.isfinite(patch.variances)])))
    rng = np.random.default_rng(seed + 1000)
    t = (np.arange(size) + 0.5) / size
    waves = np.stack(
        [
            wave_sigma
            * sigma
            * np.cos(2 * np.pi * t + rng.uniform(0, 2 * np.pi))[:, None]
            * np.sin(2 * np.pi * t + rng.uniform(0, 2 * np.pi))[None, :]
            for _ in range(n)
        ]
    )
    patch = dataclasses.replace(
        patch, images=patch.images + waves, backgrounds=patch.backgrounds + waves
    )
    image = jnp.asarray(np.asarray(batch.image) + waves.astype(np.float32))
    return patch, dataclasses.replace(batch, image=image)


def start_setup(family, size):
    """The start config (LSST's default of ``family``, binSize scaled to a
    ``size``² image) and the bin sizes the tuner searches (None: `autotune`'s own
    default ladder, `BIN_SIZES` limited to the image)."""
    if family == "chebyshev":
        start = jm.MatchBackgroundsConfig(usePolynomial=True, order=6, binSize=size // 8)
        return start, (size // 16, size // 8)
    # LSST: AKIMA spline, binSize 256 at 1024², MEAN, knot spacing 1
    return jm.MatchBackgroundsConfig().replace(binSize=size // 4), None


def brute_force(patch, batch, start, ref, shape, cell_size, bins):
    """Truth error of every setting of `autotune`'s default search space: one
    compilation per discrete candidate (λ and numSigmaClip are `match` arguments)."""
    n = batch.image.shape[0]
    others = np.array([i for i in range(n) if i != ref])
    truth = patch.backgrounds[ref][None] - patch.backgrounds[others]
    sigma = np.sqrt(np.median(patch.variances[np.isfinite(patch.variances)]))
    rows = [(truth_error(patch, batch, start, ref), start)]
    for cand in candidate_settings(start, shape, cell_size=cell_size, bin_sizes=bins):
        cfg = cand.replace(gridStatistic="MEANCLIP")
        for nsig in CLIP_GRID:
            for lam in ROUGHNESS_GRID:
                out = jm.match(
                    batch[ref],
                    batch[others],
                    cfg,
                    roughness=lam,
                    num_sigma_clip=nsig,
                    raise_on_failure=False,
                )
                model = np.asarray(out.model.getImage(), float)
                err = float(np.max(np.sqrt(np.nanmean((model - truth) ** 2, axis=(1, 2)))))
                rows.append(
                    (err / sigma, cfg.replace(splineRoughness=float(lam), numSigmaClip=nsig))
                )
    return rows


def describe(c):
    if c.usePolynomial:
        basis = f"order {c.order}"
    else:
        basis = f"{c.interpStyle}, knots/{c.splineKnotSpacing}"
    return (
        f"binSize {c.binSize}, {basis}, {c.gridStatistic} {c.numSigmaClip:g}, "
        f"λ {c.splineRoughness:g}"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--exposures", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", choices=("chebyshev", "spline"), default="chebyshev")
    p.add_argument(
        "--wave", type=float, default=None, help="wave amplitude [σ] (chebyshev 0.6, spline 0)"
    )
    p.add_argument("--json", help="write the numbers to this JSON file")
    args = p.parse_args()
    size = args.size
    wave = args.wave if args.wave is not None else (0.6 if args.family == "chebyshev" else 0.0)
    t0 = time.perf_counter()
    patch, batch = wave_scene(args.exposures, size, args.seed, wave)
    print(f"scene: {args.exposures} x {size}² float32 in {time.perf_counter() - t0:.1f} s")
    lsst, bins = start_setup(args.family, size)
    shape = (size, size)
    cell_size = default_cell_size(shape)
    ref = choose_reference(batch, lsst)

    t0 = time.perf_counter()
    result = jm.autotune(batch, lsst, budget_s=1e9, reference=ref, bin_sizes=bins)
    tune_s = time.perf_counter() - t0
    print(result.summary(top=3))

    t0 = time.perf_counter()
    rows = brute_force(patch, batch, lsst, ref, shape, cell_size, bins)
    brute_s = time.perf_counter() - t0
    best_err, best_cfg = min(rows, key=lambda r: r[0])
    lsst_err = rows[0][0]
    tuned_err = truth_error(patch, batch, result.config, ref)
    floor = floor_error(patch, batch, result.config, ref)
    out = dict(
        family=args.family,
        size=size,
        exposures=args.exposures,
        wave_sigma=wave,
        lsst=lsst_err,
        lsst_setting=describe(lsst),
        tuned=tuned_err,
        tuned_setting=describe(result.config),
        tuned_heldout_loss=result.loss,
        lsst_heldout_loss=result.default_loss,
        tune_seconds=round(tune_s, 1),
        tune_settings=len(result.candidates),
        brute_force_best=best_err,
        brute_force_setting=describe(best_cfg),
        brute_force_settings=len(rows),
        brute_force_seconds=round(brute_s, 1),
        tuned_over_best=tuned_err / best_err,
        floor_tuned_basis=floor,
    )
    print(
        f"LSST {lsst_err:.4f}σ; tuned {tuned_err:.4f}σ ({describe(result.config)}; "
        f"{tune_s:.0f} s, {len(result.candidates)} settings); brute-force best "
        f"{best_err:.4f}σ ({describe(best_cfg)}; {brute_s:.0f} s, {len(rows)} settings); "
        f"tuned / best = {tuned_err / best_err:.3f}; floor {floor:.4f}σ"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
