"""Time of the least-squares fit alone, as the bin grid and the model grow.

`jaxmatch._solve.solve_least_squares`, jitted and vmapped over N exposures, on
random grids with the shapes `jaxmatch.match` builds: ``ny × nx`` bins, and

- Chebyshev order o (TOTAL terms active, ``(o+1)²`` columns, no roughness rows),
- a cardinal spline with one knot per bin (``ny·nx`` columns, the second-difference
  roughness rows of §6: ``(ny-2)·nx + ny·(nx-2)``),

plus the ``k`` ridge rows. As in `jaxmatch.match`, the spline's penalty and
active mask are NumPy arrays, so the solve replaces the roughness and ridge rows
by the ``k`` rows of their Gram matrix's eigen-factor (`jaxmatch._solve`): its QR
has ``ny·nx + k`` rows. The pixel count never enters: the fit sees only the
grid, so this time is the same for a 512² and a 4096² image with the same grid.
Reported next to it: NumPy's ``np.linalg.lstsq`` in a loop over the N problems
(what `numpy_baseline` does).

    python benchmarks/fit_only.py [--n 16] [--grids 4,8,16,32] [--orders 4,6,8] [--out fit.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmatch._solve import _stacked, solve_least_squares


def _problem(kind, nb, order, n, dtype, rng):
    cy = np.linspace(-1, 1, nb)
    if kind == "chebyshev":
        k1 = order + 1
        t = np.polynomial.chebyshev.chebvander(cy, order)  # (nb, k1)
        design = np.einsum("ap,bq->abpq", t, t).reshape(nb * nb, k1 * k1)
        p, q = np.arange(k1)[:, None], np.arange(k1)[None, :]
        active = ((p + q) <= order).reshape(-1)
        penalty = np.zeros((0, k1 * k1))
    else:
        design = np.eye(nb * nb)  # cardinal basis at the knots = identity
        d = np.diff(np.eye(nb), n=2, axis=0)
        penalty = np.concatenate([np.kron(d, np.eye(nb)), np.kron(np.eye(nb), d)])
        active = np.ones(nb * nb, bool)
    z = rng.normal(size=(n, nb * nb))
    w = rng.uniform(0.5, 1.5, size=(n, nb * nb))
    static = kind != "chebyshev"  # as match passes them (see the module docstring)
    return (
        jnp.asarray(design, dtype),
        jnp.asarray(z, dtype),
        jnp.asarray(w, dtype),
        penalty.astype(dtype) if static else jnp.asarray(penalty, dtype),
        active if static else jnp.asarray(active),
    ), (design, z, w, penalty, active)


def _numpy_fit(design, z, w, penalty, active, mu=1e-3, eps=1e-4):
    act = active.astype(float)
    k = design.shape[1]
    out = np.empty((z.shape[0], k))
    for i in range(z.shape[0]):
        a = np.concatenate(
            [w[i][:, None] * design * act, mu * penalty * act, np.diag(eps * act + (1 - act))]
        )
        b = np.concatenate([w[i] * z[i], np.zeros(a.shape[0] - design.shape[0])])
        out[i] = np.linalg.lstsq(a, b, rcond=None)[0] * act
    return out


def run(n=16, grids=(4, 8, 16, 32), orders=(4, 6, 8), dtype="float32", repeats=5, max_rows=2500):
    """Rows of the fit-only table (skips problems whose stacked matrix exceeds ``max_rows``)."""
    rng = np.random.default_rng(0)
    dtype = jnp.dtype(dtype)
    mu, eps = jnp.asarray(1e-3, dtype), jnp.asarray(1e-4, dtype)
    rows = []
    cases = [("chebyshev", nb, o) for nb in grids for o in orders if o <= nb - 1]
    cases += [("spline", nb, None) for nb in grids]
    for kind, nb, order in cases:
        (design, z, w, penalty, active), np_args = _problem(kind, nb, order, n, dtype, rng)
        m_rows = _stacked(design, w[0], penalty, mu, active, eps)[0].shape[0]
        if m_rows > max_rows:
            rows.append(
                dict(
                    model=kind,
                    bins=f"{nb}x{nb}",
                    order=order,
                    skipped=(f"stacked matrix has {m_rows} rows > {max_rows}"),
                )
            )
            continue
        f = jax.jit(
            jax.vmap(
                lambda z1, w1: solve_least_squares(  # noqa: B023
                    design, z1, w1, penalty, mu, active, eps
                )
            )
        )  # noqa: B023
        t0 = time.perf_counter()
        jax.block_until_ready(f(z, w))
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(z, w))
            times.append(time.perf_counter() - t0)
        np_times = []
        for _ in range(max(1, repeats // 2)):
            t0 = time.perf_counter()
            _numpy_fit(*np_args)
            np_times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows.append(
            dict(
                model=kind,
                bins=f"{nb}x{nb}",
                n_bins=nb * nb,
                order=order,
                coefficients=int(design.shape[1]),
                active=int(np.sum(np_args[4])),
                matrix_rows=m_rows,
                n=n,
                dtype=str(dtype),
                compile_s=compile_s,
                times_s=times,
                median_s=med,
                per_fit_ms=1e3 * med / n,
                numpy_lstsq_median_s=statistics.median(np_times),
                numpy_per_fit_ms=1e3 * statistics.median(np_times) / n,
            )
        )
    return rows


def format_table(rows):
    lines = [
        f"{'model':9s} {'bins':>6s} {'order':>5s} {'coefs':>5s} {'rows':>5s} "
        f"{'compile s':>9s} {'N fits s':>9s} {'ms/fit':>8s} {'numpy ms/fit':>12s}"
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(
                f"{r['model']:9s} {r['bins']:>6s} {str(r['order'] or '-'):>5s}  "
                f"skipped: {r['skipped']}"
            )
            continue
        lines.append(
            f"{r['model']:9s} {r['bins']:>6s} {str(r['order'] or '-'):>5s} {r['coefficients']:5d} "
            f"{r['matrix_rows']:5d} {r['compile_s']:9.2f} {r['median_s']:9.4f} "
            f"{r['per_fit_ms']:8.3f} {r['numpy_per_fit_ms']:12.3f}"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--grids", default="4,8,16,32")
    ap.add_argument("--orders", default="4,6,8")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-rows", type=int, default=2500)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    rows = run(
        args.n,
        tuple(map(int, args.grids.split(","))),
        tuple(map(int, args.orders.split(","))),
        args.dtype,
        args.repeats,
        args.max_rows,
    )
    print(
        f"# fit only: solve_least_squares vmapped over N={args.n}, {args.dtype}, "
        f"{jax.devices()[0].platform}"
    )
    print(format_table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
