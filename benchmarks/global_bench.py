"""Time and memory of global matching (`jaxmatch.match_all`'s two steps).

Project requirement: "N = 64 exposures of 2048² with K = 25 terms must run on
this machine; report time and memory". Config: Chebyshev order 4, TENSOR terms
(5 × 5 = 25 coefficients per exposure), binSize 128 (``min(128, side // 16)``
for smaller sides so that order 4 stays legal), GLOBAL mode,
``globalMaxPartners`` 8, covariance on.

Data (float32, NumPy, cheap): a constant sky, a per-exposure low-order
polynomial background (``Σ a_kl ỹ^k x̃^l``, ``k + l ≤ 2``, a few ADU), Gaussian
noise, variance plane = the noise variance, and a NO_DATA strip (NaN image, bit
set in the mask) of a different width/position on every 4th exposure so the
overlap graph is not complete-and-uniform.

Measured separately, each with the peak-RSS delta (VmHWM reset through
``/proc/self/clear_refs``, `methods.PeakRSS`):

- ``structure``: what `jaxmatch.global_structure` does, step by step —
  `pair_overlaps` (jitted N × N pass over the masks; first call, so compile
  included), then `choose_pairs` / `connected_groups` / `gauge_exposures` (host);
- ``solve 1st``: `jaxmatch.match_global(..., covariance=True)`, first call
  (compile + run), ``block_until_ready`` on the whole result;
- ``solve 2nd``: the same call again (run only).

    python benchmarks/global_bench.py --n 8 --side 512 --out global_small.json
    python benchmarks/global_bench.py --n 64 --side 2048 --out global_n64.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

# As run.py does for its workers: one BLAS thread (2-core shared machine).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from methods import PeakRSS, _status_kb  # noqa: E402

import jaxmatch  # noqa: E402

GIB = 1024.0**3


def make_config(max_partners: int | None, bin_size: int = 128) -> jaxmatch.MatchBackgroundsConfig:
    return jaxmatch.MatchBackgroundsConfig(
        usePolynomial=True,
        order=4,
        chebyshevTerms="TENSOR",
        binSize=bin_size,
        matchMode="GLOBAL",
        globalMaxPartners=max_partners,
    )


def make_exposures(n: int, side: int, *, seed: int = 0, sky: float = 1000.0, sigma: float = 10.0):
    """``n`` float32 exposures ``side × side`` as one batch `jaxmatch.Exposure`.

    Built one exposure at a time into preallocated NumPy arrays, then handed to
    JAX (one copy each); the NumPy arrays are dropped before returning.
    """
    rng = np.random.default_rng(seed)
    no_data = np.int32(1 << jaxmatch.DEFAULT_MASK_PLANES["NO_DATA"])
    t = np.linspace(-1.0, 1.0, side, dtype=np.float32)
    image = np.empty((n, side, side), np.float32)
    mask = np.zeros((n, side, side), np.int32)
    for i in range(n):
        a = rng.normal(0.0, 3.0, size=6).astype(np.float32)  # 1, y, x, y², xy, x²
        col = a[0] + a[2] * t + a[5] * t * t  # terms in x only
        row = a[1] * t + a[3] * t * t  # terms in y only
        rng.standard_normal(out=image[i], dtype=np.float32)
        image[i] *= sigma
        image[i] += sky
        image[i] += col[None, :]
        image[i] += row[:, None]
        image[i] += (a[4] * t)[:, None] * t[None, :]
        if i % 4 == 1:  # a NO_DATA strip: columns [x0, x0 + w)
            w = side // 8 + (i * side // 64) % (side // 4)
            x0 = (i * side // 7) % (side - w)
            image[i, :, x0 : x0 + w] = np.nan
            mask[i, :, x0 : x0 + w] |= no_data
    var = np.float32(sigma**2)
    img = jnp.asarray(image)
    del image
    msk = jnp.asarray(mask)
    del mask
    variance = jnp.full((n, side, side), var, jnp.float32)
    exp = jaxmatch.Exposure(img, msk, variance)
    jax.block_until_ready(exp)
    return exp


_HWM = {}


def _step(fn):
    """``(result, seconds, peak-RSS delta bytes)`` of one call of ``fn``; the process's
    absolute peak RSS during the call (VmHWM) is left in ``_HWM["last"]``."""
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        dt = time.perf_counter() - t0
    _HWM["last"] = (_status_kb("VmHWM") or 0) * 1024
    return out, dt, rss.peak


def run(n: int, side: int, max_partners: int | None, *, seed: int = 0, bin_size: int = 128):
    config = make_config(max_partners, bin_size)
    rows = {}

    exposures, dt, peak = _step(lambda: make_exposures(n, side, seed=seed))
    input_bytes = sum(a.nbytes for a in (exposures.image, exposures.mask, exposures.variance))
    rows["data"] = dict(seconds=dt, peak_rss_bytes=peak, process_peak_bytes=_HWM["last"])

    # Structure (= jaxmatch.global_structure, split into its device and host parts).
    overlaps, dt_o, peak_o = _step(lambda: jaxmatch.pair_overlaps(exposures, config))
    rows["structure: pair_overlaps (1st call)"] = dict(
        seconds=dt_o, peak_rss_bytes=peak_o, process_peak_bytes=_HWM["last"]
    )

    def host():
        pairs = jaxmatch.choose_pairs(overlaps, config.globalMaxPartners)
        groups = jaxmatch.connected_groups(n, pairs)
        from jaxmatch._global import gauge_exposures

        return pairs, groups, gauge_exposures(groups, 0)

    (pairs, groups, gauge), dt_h, peak_h = _step(host)
    rows["structure: pairs/groups/gauge"] = dict(
        seconds=dt_h, peak_rss_bytes=peak_h, process_peak_bytes=_HWM["last"]
    )
    rows["structure total"] = dict(
        seconds=dt_o + dt_h,
        peak_rss_bytes=max(peak_o, peak_h),
        process_peak_bytes=max(
            rows["structure: pair_overlaps (1st call)"]["process_peak_bytes"], _HWM["last"]
        ),
    )

    def solve():
        return jaxmatch.match_global(exposures, pairs, groups, gauge, config, covariance=True)

    result, dt1, peak1 = _step(solve)
    rows["solve 1st (compile + run)"] = dict(
        seconds=dt1, peak_rss_bytes=peak1, process_peak_bytes=_HWM["last"]
    )
    del result
    result, dt2, peak2 = _step(solve)
    rows["solve 2nd (run)"] = dict(
        seconds=dt2, peak_rss_bytes=peak2, process_peak_bytes=_HWM["last"]
    )
    rows["compile (1st - 2nd)"] = dict(seconds=dt1 - dt2, peak_rss_bytes=None)

    status = np.asarray(result.status)
    k = int(np.prod(result.model.coefficients.shape[1:]))
    info = dict(
        n=n,
        side=side,
        bin_size=bin_size,
        max_partners=max_partners,
        terms_K=k,
        pairs=int(len(pairs)),
        groups=int(len(set(groups[groups >= 0].tolist()))),
        success=int(np.sum(status == 0)),
        chi2_reduced=float(result.chi2_reduced),
        covariance_finite=bool(np.all(np.isfinite(np.asarray(result.covariance)[status == 0]))),
        input_bytes=int(input_bytes),
        process_peak_rss_bytes=max(r.get("process_peak_bytes") or 0 for r in rows.values()),
        process_rss_bytes=(_status_kb("VmRSS") or 0) * 1024,
        steps=rows,
        machine=dict(
            platform=platform.platform(),
            cpus=os.cpu_count(),
            jax=jax.__version__,
            backend=jax.default_backend(),
            date=datetime.date.today().isoformat(),
            loadavg=os.getloadavg(),
        ),
    )
    return info


def format_table(info) -> str:
    lines = [
        f"N={info['n']}  {info['side']}²  K={info['terms_K']}  binSize={info['bin_size']}  "
        f"maxPartners={info['max_partners']}  pairs={info['pairs']}  groups={info['groups']}  "
        f"success={info['success']}/{info['n']}  inputs={info['input_bytes'] / GIB:.2f} GiB",
        f"{'step':<38} {'seconds':>9} {'peak RSS Δ GiB':>15} {'process peak GiB':>17}",
    ]
    for name, row in info["steps"].items():
        peak = row["peak_rss_bytes"]
        peak_s = "" if peak is None else f"{peak / GIB:.2f}"
        hwm = row.get("process_peak_bytes")
        hwm_s = "" if hwm is None else f"{hwm / GIB:.2f}"
        lines.append(f"{name:<38} {row['seconds']:>9.2f} {peak_s:>15} {hwm_s:>17}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--side", type=int, default=2048)
    p.add_argument("--max-partners", type=int, default=8, help="globalMaxPartners (0: all pairs)")
    p.add_argument(
        "--bin-size", type=int, default=None, help="default min(128, side // 16): 128 at 2048²"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=str, default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    info = run(
        args.n,
        args.side,
        args.max_partners or None,
        seed=args.seed,
        bin_size=args.bin_size or min(128, args.side // 16),
    )
    print(format_table(info))
    if args.out:
        Path(args.out).write_text(json.dumps(info, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
