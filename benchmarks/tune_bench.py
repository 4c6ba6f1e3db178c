"""Time and accuracy of one-call self-tuning (`jaxmatch.autotune`).

Simulates a deep-field patch (extended, numerous galaxies; full overlap; float32),
runs `autotune` within ``--budget`` seconds for each model family and prints, in
units of the per-pixel noise σ (worst exposure's RMS error of the fitted background
difference vs the truth):

- LSST defaults (spline binSize 256 / Chebyshev order 6 binSize 128 on the image);
- the self-tuned config (chosen without the truth);
- the brute-force best of the evaluated candidates (chosen *with* the truth);
- the noise floor: the same basis fitted to the noiseless truth (same masks).

Usage::

    python benchmarks/tune_bench.py                  # 5 x 1024², budget 120 s
    python benchmarks/tune_bench.py --quick          # 5 x 512², budget 40 s
    python benchmarks/tune_bench.py --no-truth       # timing only
    python benchmarks/tune_bench.py --json out.json  # also write the numbers
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax.numpy as jnp
import numpy as np

import jaxmatch as jm
from jaxmatch._autotune import choose_reference


def deep_scene(n, size, seed, amplitude=80.0):
    """A full-overlap deep-field patch: 400 galaxies per 256², twice the usual size,
    fluxes down to 1/20 of the detection limit (their light is never masked), and
    backgrounds with ``amplitude`` ADU of structure (~4 σ: a real sky's gradients)."""
    area = size * size / 256**2
    patch = jm.simulate_patch(
        n,
        (size, size),
        seed=seed,
        coverage="full",
        n_galaxies=round(400 * area),
        galaxy_size=2.0,
        galaxy_faint_limit=0.05,
        background_amplitude=amplitude,
    )
    exposures = [
        jm.Exposure(
            patch.images[i].astype(np.float32),
            mask=patch.masks[i],
            variance=patch.variances[i].astype(np.float32),
        )
        for i in range(n)
    ]
    return patch, jm.stack_exposures(exposures)


def truth_error(patch, batch, config, ref) -> float:
    """Worst exposure's RMS(model - (B_ref - B_i)) over the image, in σ."""
    n = batch.image.shape[0]
    others = np.array([i for i in range(n) if i != ref])
    if config.matchMode == "GLOBAL":
        out = jm.match_all(batch, config, reference=ref, covariance=False, raise_on_failure=False)
        models = np.asarray(out.model.getImage(), float)[others]
    else:
        out = jm.match(batch[ref], batch[others], config, raise_on_failure=False)
        models = np.asarray(out.model.getImage(), float)
    truth = patch.backgrounds[ref][None] - patch.backgrounds[others]
    sigma = np.sqrt(np.median(patch.variances[np.isfinite(patch.variances)]))
    return float(np.max(np.sqrt(np.nanmean((models - truth) ** 2, axis=(1, 2))))) / sigma


def floor_error(patch, batch, config, ref) -> float:
    """The basis's floor: the same fit to the noiseless backgrounds (no sources)."""
    image = jnp.where(
        jnp.isfinite(batch.image), jnp.asarray(patch.backgrounds, batch.image.dtype), jnp.nan
    )
    # unweighted: noiseless bins have no scatter, so inverse-variance weights are void
    floor_config = config.replace(approxWeighting=False)
    return truth_error(patch, dataclasses.replace(batch, image=image), floor_config, ref)


def run(size, n, seed, budget, truth, families):
    t0 = time.perf_counter()
    patch, batch = deep_scene(n, size, seed)
    print(f"scene: {n} x {size}² float32, simulated in {time.perf_counter() - t0:.1f} s")
    rows = []
    for name, lsst in families:
        ref = choose_reference(batch, lsst)
        t0 = time.perf_counter()
        result = jm.autotune(batch, lsst, budget_s=budget, reference=ref)
        seconds = time.perf_counter() - t0
        print(result.summary(top=3))
        row = dict(
            family=name,
            seconds=round(seconds, 1),
            budget_s=budget,
            candidates=len(result.candidates),
            complete=result.complete,
            chosen=dict(
                binSize=result.config.binSize,
                order=result.config.order if result.config.usePolynomial else None,
                splineRoughness=result.config.splineRoughness,
                gridStatistic=result.config.gridStatistic,
                numSigmaClip=result.config.numSigmaClip,
            ),
            loss=result.loss,
            default_loss=result.default_loss,
        )
        if truth:
            row["lsst"] = truth_error(patch, batch, lsst, ref)
            row["tuned"] = truth_error(patch, batch, result.config, ref)
            row["floor_tuned_basis"] = floor_error(patch, batch, result.config, ref)
            # brute force with the truth over the best discrete settings evaluated
            best = {}
            for c in result.candidates:
                key = (c.binSize, c.order, c.splineKnotSpacing)
                if key not in best:
                    best[key] = c
            brute = []
            for c in list(best.values())[:6]:
                cfg = lsst.replace(
                    binSize=c.binSize,
                    order=c.order if c.order >= 0 else lsst.order,
                    splineRoughness=c.splineRoughness,
                    gridStatistic=c.gridStatistic,
                    numSigmaClip=c.numSigmaClip,
                )
                brute.append((truth_error(patch, batch, cfg, ref), c))
            err, c = min(brute, key=lambda b: b[0])
            row["brute_force_best"] = err
            row["brute_force_setting"] = c._asdict()
            print(
                f"{name}: LSST {row['lsst']:.4f}σ, tuned {row['tuned']:.4f}σ, brute-force best "
                f"{err:.4f}σ, floor {row['floor_tuned_basis']:.4f}σ; tuning {seconds:.1f} s"
            )
        rows.append(row)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5 x 512², budget 40 s")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--exposures", type=int, default=5)
    p.add_argument("--budget", type=float, default=120.0, help="[s] per model family")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-truth", action="store_true", help="timing only")
    p.add_argument("--family", choices=("spline", "chebyshev", "both"), default="both")
    p.add_argument("--json", help="write the rows to this JSON file")
    args = p.parse_args()
    size, budget = (512, 40.0) if args.quick else (args.size, args.budget)
    spline = jm.MatchBackgroundsConfig()  # LSST defaults: AKIMA spline, binSize 256, MEAN
    cheb = jm.MatchBackgroundsConfig(usePolynomial=True, order=6, binSize=128)
    if size < 4 * 128:
        cheb = cheb.replace(binSize=size // 8)
    families = [("spline", spline), ("chebyshev", cheb)]
    if args.family != "both":
        families = [f for f in families if f[0] == args.family]
    rows = run(size, args.exposures, args.seed, budget, not args.no_truth, families)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
