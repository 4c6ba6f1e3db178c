"""Stage-by-stage timing of `jaxmatch.match` (one case), to see which stage dominates.

Each stage is jitted and vmapped over the batch exactly as `_match_one` calls it,
compiled once, then timed (median of ``--repeats`` runs, ``block_until_ready``).
The stages overlap (e.g. "grid MEANCLIP" includes forming the difference image),
so the numbers are not meant to add up; compare each with "full match".

    python benchmarks/profile_stages.py [--n 16] [--side 1024] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import make_case  # noqa: E402

import jaxmatch  # noqa: E402
from jaxmatch import _match as jm  # noqa: E402
from jaxmatch._binning import (  # noqa: E402
    cell_centres,
    grid_statistics,
    masked_statistic,
    split_cells,
)
from jaxmatch._compile import CPU_REDUCTION_OPTIONS  # noqa: E402
from jaxmatch._diagnostics import centre_pixels, fit_rms, matched_mse  # noqa: E402
from jaxmatch._solve import solve_least_squares  # noqa: E402
from jaxmatch._spline import DEGREE, difference_matrix  # noqa: E402


def timed(fn, *args, repeats=5):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - t0)
    return compile_s, statistics.median(runs), min(runs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--interp", default="NATURAL_SPLINE")
    ap.add_argument("--statistic", default="MEANCLIP")
    ap.add_argument("--polynomial", action="store_true")
    ap.add_argument("--order", type=int, default=6)
    ap.add_argument("--bin-size", type=int, default=None, help="default: side // 16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the numbers as JSON")
    args = ap.parse_args(argv)

    n, side, dtype = args.n, args.side, np.dtype(args.dtype)
    bin_size = args.bin_size or side // 16
    case = make_case(n, side, dtype, seed=0)
    ref, sci = case.jax_exposures()
    config = jaxmatch.MatchBackgroundsConfig(
        usePolynomial=args.polynomial,
        order=args.order,
        interpStyle=args.interp,
        gridStatistic=args.statistic,
        binSize=bin_size,
    )
    bits_r = ref.bitmask(config.badMaskPlanes)
    bits_s = sci.bitmask(config.badMaskPlanes)
    plan = jm.plan_fit(config, (side, side), bin_size)
    nsig = jnp.asarray(config.numSigmaClip, dtype=dtype)
    stat = (config.gridStatistic, nsig, config.numIter)

    def prep(s):
        diff = ref.image - s.image
        usable = ((ref.mask & bits_r) == 0) & ((s.mask & bits_s) == 0) & jnp.isfinite(diff)
        return diff, usable

    def stage_floor_add(s):  # read one image plane, write one: the JAX memory floor
        return s.image + ref.image

    def stage_diff_sum(s):  # diff, usable and ONE masked reduction per cell
        diff, usable = prep(s)
        cells, _ = split_cells(jnp.where(usable, diff, 0), plan.fit_y, plan.fit_x)
        return jnp.sum(cells, axis=(1, 3))

    def diff_im_var(s):  # the MEANCLIP of the variance plane, on its own
        _, usable = prep(s)
        var = ref.variance + s.variance
        ok = usable & jnp.isfinite(var)
        return masked_statistic(var, ok, (0, 1), "MEANCLIP", nsig, config.numIter)[0]

    def stage_grid(s):
        diff, usable = prep(s)
        return grid_statistics(diff, usable, plan.fit_y, plan.fit_x, *stat)

    def stage_grid_diag(s):  # the grid statistic plus diffImVar and matchedMSE passes
        diff, usable = prep(s)
        g = grid_statistics(diff, usable, plan.fit_y, plan.fit_x, *stat)
        return g, diff_im_var(s)

    def stage_grid_pooled(s):  # the library's way: both in the same passes
        diff, usable = prep(s)
        pooled = ((ref.variance, s.variance), None)  # over usable pixels, finite variance
        return grid_statistics(diff, usable, plan.fit_y, plan.fit_x, *stat, pooled=pooled)

    def stage_diffimvar(s):
        return diff_im_var(s)

    basis = plan.basis
    coef_shape = basis.coefficient_shape
    coef = jnp.asarray(np.random.default_rng(0).normal(size=(n,) + coef_shape), dtype=dtype)

    def stage_eval(c):  # model image only (separable evaluation)
        return basis.evaluate(c, np.arange(side, dtype=dtype), np.arange(side, dtype=dtype))

    edges = (plan.diag_y, plan.diag_x)

    def stage_eval_add(c, s):  # model image + matched = sci + model + matchedMSE + fitRMS
        model = stage_eval(c)
        diff, usable = prep(s)
        return (
            s.image + model,
            matched_mse(diff, model, usable),
            fit_rms(
                jnp.zeros((len(plan.diag_y[0]), len(plan.diag_x[0])), dtype),
                jnp.ones((len(plan.diag_y[0]), len(plan.diag_x[0])), bool),
                basis.evaluate(c, *(jnp.asarray(centre_pixels(e), dtype) for e in edges)),
            ),
        )

    # The solve on the real grid values: take them from one full run.
    full = jaxmatch.match(ref, sci, config, raise_on_failure=False)
    jax.block_until_ready(full)

    # Build the solve exactly as _match_one does, from grid values/weights.
    cy = jnp.asarray(cell_centres(*plan.fit_y), dtype=dtype)
    cx = jnp.asarray(cell_centres(*plan.fit_x), dtype=dtype)
    by, bx = basis.matrix_y(cy), basis.matrix_x(cx)
    ky, kx = coef_shape
    design = jnp.einsum("ap,bq->abpq", by, bx).reshape(-1, ky * kx)
    if basis.kind == "SPLINE":
        degree = DEGREE[basis.style]
        dy, dx = difference_matrix(ky, degree), difference_matrix(kx, degree)
        penalty = np.concatenate([np.kron(dy, np.eye(kx)), np.kron(np.eye(ky), dx)])
        penalty = penalty.astype(dtype)  # NumPy, as match passes it (the smaller QR)
    else:
        penalty = np.zeros((0, ky * kx), dtype=dtype)
    z = jnp.nan_to_num(full.grid_values).reshape(n, -1)
    sw = jnp.sqrt(full.grid_weights).reshape(n, -1)
    active = np.ones(ky * kx, bool)

    def stage_solve(z1, w1):
        return solve_least_squares(
            design, z1, w1, penalty, jnp.asarray(1e-3, dtype), active, jnp.asarray(1e-4, dtype)
        )

    def stage_prepare(s):  # the library's own "everything before the solve", if it has one
        hyper = jm.hyperparameters(config, dtype, None, None, None)
        fit = jm.prepare_fit(ref, s, hyper, bits_r, bits_s, config, plan, with_diff_im_var=True)
        return fit.grid.z, fit.grid.sqrt_w, fit.grid.diff_im_var

    def full_match():
        return jaxmatch.match(ref, sci, config, raise_on_failure=False)

    # Compiled as the library compiles `match` (jaxmatch/_compile.py).
    vm = lambda f: jax.jit(jax.vmap(f), compiler_options=CPU_REDUCTION_OPTIONS)  # noqa: E731
    stages = [
        ("floor: sci + ref (jit)", vm(stage_floor_add), (sci,)),
        ("diff + usable + 1 masked cell sum", vm(stage_diff_sum), (sci,)),
        (f"grid {config.gridStatistic} (fit grid)", vm(stage_grid), (sci,)),
        ("diffImVar alone (MEANCLIP of var)", vm(stage_diffimvar), (sci,)),
        (f"grid {config.gridStatistic}, then diffImVar", vm(stage_grid_diag), (sci,)),
        (f"grid {config.gridStatistic} + diffImVar, shared", vm(stage_grid_pooled), (sci,)),
        ("prepare_fit (all before the solve)", vm(stage_prepare), (sci,)),
        ("solve alone (QR on the grid)", vm(stage_solve), (z, sw)),
        ("model evaluation alone", vm(stage_eval), (coef,)),
        ("model + matched + MSE + fitRMS", vm(stage_eval_add), (coef, sci)),
        ("full jaxmatch.match", full_match, ()),
    ]
    pix = n * side * side
    print(f"# OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(
        f"# stage profile: N={n} {side}x{side} {dtype} {config.gridStatistic} "
        f"{'Chebyshev order ' + str(config.order) if config.usePolynomial else config.interpStyle} "
        f"binSize={bin_size}; {jax.devices()[0]}; load avg {jax_load()}"
    )
    print(
        f"{'stage':42s} {'compile s':>9s} {'median s':>9s} {'min s':>8s} {'Mpix/s':>8s} "
        f"{'% of match':>10s}"
    )
    rows = []
    for name, fn, a in stages:
        c, med, mn = timed(fn, *a, repeats=args.repeats)
        rows.append(dict(stage=name, compile_s=c, median_s=med, min_s=mn))
    total = rows[-1]["median_s"]
    for r in rows:
        print(
            f"{r['stage']:42s} {r['compile_s']:9.3f} {r['median_s']:9.3f} {r['min_s']:8.3f} "
            f"{pix / r['median_s'] / 1e6:8.1f} {100 * r['median_s'] / total:9.0f}%"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                dict(n=n, side=side, dtype=str(dtype), config=config.toDict(), stages=rows),
                indent=1,
            )
        )


def jax_load():
    import os

    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
