"""Time and memory of the global block solve alone (`jaxmatch._solve.solve_pair_blocks`).

Runs, in one process on the same synthetic bins: the current solve (whitened
block system, shifted-Cholesky preconditioned CGLS); with ``--previous COMMIT``
that commit's ``jaxmatch/_solve.py`` (e.g. the dense QR of the whitened stack,
0e8abe7), loaded from git; with ``--kkt`` the normal-equations/KKT-inverse solve
of earlier versions. Each: first call (compile + run), second call (run), peak
RSS, and the largest coefficient difference from the first method run.

The pixel passes of `match_global` scale with N · pixels; the solve with the
pairs and N·K. This isolates the solve at the project's target size without
the pixel data: N exposures, a Chebyshev order-4 TENSOR basis (K = 25) on a
16 × 16 bin grid (2048² at binSize 128), each exposure paired with its
``partners`` nearest neighbours on a ring (N = 64, 8 partners: 256 pairs),
random weights and values, covariance on; float32 unless --float64.

    python benchmarks/global_solve_bench.py --n 64 --previous 0e8abe7 --kkt
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import types
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from methods import PeakRSS  # noqa: E402

from jaxmatch._chebyshev import chebyshev_matrix  # noqa: E402
from jaxmatch._solve import regulariser_rows, solve_pair_blocks  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--partners", type=int, default=8)
    parser.add_argument("--bins", type=int, default=16)
    parser.add_argument("--order", type=int, default=4)
    parser.add_argument("--float64", action="store_true")
    parser.add_argument(
        "--kkt", action="store_true", help="also the normal-equations + KKT-inverse solve"
    )
    parser.add_argument(
        "--previous", default=None, help="also this commit's jaxmatch/_solve.py (from git)"
    )
    args = parser.parse_args()
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if args.float64 else jnp.float32
    n, k1 = args.n, args.order + 1
    t = np.linspace(-1, 1, args.bins)
    cheb = np.asarray(chebyshev_matrix(jnp.asarray(t), args.order))
    design = jnp.asarray(np.einsum("ap,bq->abpq", cheb, cheb).reshape(-1, k1 * k1), dtype)
    pairs = sorted(
        {
            (min(i, (i + d) % n), max(i, (i + d) % n))
            for i in range(n)
            for d in range(1, 1 + args.partners // 2)
        }
    )
    pairs = np.array(pairs)
    rng = np.random.default_rng(0)
    m = design.shape[0]
    weights = jnp.asarray(rng.uniform(0.5, 1.5, (len(pairs), m)), dtype)
    values = jnp.asarray(rng.normal(0, 1, (len(pairs), m)), dtype)
    k = k1 * k1
    act = jnp.ones((n, k), dtype)
    penalty = np.diag(np.add.outer(np.arange(k1), np.arange(k1)).reshape(-1).astype(float))
    reg = jax.vmap(
        lambda a: regulariser_rows(penalty, jnp.asarray(1e-6, dtype), jnp.asarray(1.6e-4, dtype), a)
    )(act)
    pinned = np.zeros(n, bool)
    pinned[0] = True

    def current(w, z, r):
        return solve_pair_blocks(design, w, z, pairs, r, act, pinned, with_covariance=True).coef

    methods = {"current (Cholesky-preconditioned CGLS)": current}
    if args.previous:
        old = _module_at(args.previous)

        def previous(w, z, r):
            sol = old.solve_pair_blocks(design, w, z, pairs, r, act, pinned, with_covariance=True)
            return sol["coef"] if isinstance(sol, dict) else sol.coef

        methods[f"previous ({args.previous}: dense QR of the whitened stack)"] = previous
    if args.kkt:
        methods["KKT inverse (normal equations)"] = lambda w, z, r: _kkt_solve(
            design, w, z, pairs, r, n
        )[0][: n * k].reshape(n, k)
    print(f"N={n} K={k} bins={m} pairs={len(pairs)} dtype={np.dtype(dtype).name}")
    first = None
    for name, method in methods.items():
        fn = jax.jit(method)
        for label in ("1st (compile + run)", "2nd (run)"):
            with PeakRSS() as peak:
                t0 = time.perf_counter()
                coef = jax.block_until_ready(fn(weights, values, reg))
                dt = time.perf_counter() - t0
            print(f"{name}: solve {label}: {dt:.2f} s, peak RSS delta {peak.peak / 2**30:.2f} GiB")
        coef = np.asarray(coef, np.float64)
        first = coef if first is None else first
        scale = np.max(np.abs(first))
        rel = np.max(np.abs(coef - first)) / scale
        print(f"{name}: max |coef - first| / max |first| = {rel:.2e}")


def _module_at(commit: str) -> types.ModuleType:
    """``jaxmatch/_solve.py`` as of ``commit`` (it imports JAX and NumPy only)."""
    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(
        ["git", "show", f"{commit}:jaxmatch/_solve.py"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType(f"solve_{commit}")
    exec(compile(text, f"{commit}:jaxmatch/_solve.py", "exec"), module.__dict__)
    return module


def _kkt_solve(design, w, z, pairs, reg, n):
    """The previous global solve, for comparison: block normal equations and one
    dense inverse of the KKT matrix (gauge: exposure 0)."""
    k = design.shape[1]
    dtype = design.dtype
    pi, pj = jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1])
    g = jnp.einsum("pm,mk,ml->pkl", w, design, design)
    h = jnp.einsum("pm,mk,pm->pk", w, design, z)
    a = jnp.zeros((n, k, n, k), dtype)
    a = a.at[pi, :, pi, :].add(g).at[pj, :, pj, :].add(g)
    a = a.at[pi, :, pj, :].add(-g).at[pj, :, pi, :].add(-g)
    a = a.at[jnp.arange(n), :, jnp.arange(n), :].add(jnp.einsum("nrk,nrl->nkl", reg, reg))
    rhs = jnp.zeros((n, k), dtype).at[pj].add(h).at[pi].add(-h)
    constraint = jnp.zeros((k, n * k), dtype).at[:, :k].set(jnp.eye(k, dtype=dtype))
    nk = n * k
    kkt = jnp.block([[a.reshape(nk, nk), constraint.T], [constraint, jnp.zeros((k, k), dtype)]])
    inverse = jnp.linalg.inv(kkt)
    sol = inverse @ jnp.concatenate([rhs.reshape(nk), jnp.zeros(k, dtype)])
    return sol, inverse[:nk, :nk]


if __name__ == "__main__":
    main()
