"""Turn a results JSON of `run.py` into Markdown tables (for the README).

    python benchmarks/report.py results.json [--compact]

``--compact``: one line per case (jaxmatch time and the ratio of each other
method's time to it) instead of one line per method.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from run import table_rows


def _mb(b):
    return "-" if b is None else f"{b / 2**20:.0f}"


def full_table(rows):
    lines = [
        "| N | side | dtype | config | method | compile s | median s | Mpix/s | × jaxmatch "
        "| peak MB | check |",
        "|" + "---|" * 11,
    ]
    for case in dict.fromkeys((r["n"], r["side"], r["dtype"]) for r in rows):
        sub = [r for r in rows if (r["n"], r["side"], r["dtype"]) == case]
        for r in table_rows(sub):
            if r["method"] == "floor-image":
                continue
            if r["method"] == "jaxmatch":
                peak = (
                    (
                        f"{_mb(r['xla_temp_bytes'] + r['xla_output_bytes'])} x / "
                        f"{_mb(r['rss_peak_bytes'])} r"
                    )
                    if "xla_temp_bytes" in r
                    else (f"{_mb(r['rss_peak_bytes'])} r")
                )
                check = f"truth rms {r['truth_rms']:.3f}"
                if r.get("gb_per_s") is not None:
                    check += f"; {r['gb_per_s']:.1f} GB/s"
                    if r.get("peak_fraction") is not None:
                        check += f" = {100 * r['peak_fraction']:.0f} % of peak"
            elif r["method"] == "floor":
                peak = f"{_mb(r['tracemalloc_peak_bytes'])} t"
                check = f"{r['gb_per_s']:.1f} GB/s"
            else:
                peak = f"{_mb(r['tracemalloc_peak_bytes'])} t / {_mb(r['rss_peak_bytes'])} r"
                check = f"truth rms {r['truth_rms']:.3f}"
                if r["method"] == "numpy":
                    check += f"; max abs Δ vs jax {r['max_abs_model_diff_vs_jaxmatch']:.0e}"
            comp = "" if r.get("compile_s") is None else f"{r['compile_s']:.1f}"
            ratio = r.get("ratio_to_jaxmatch")
            lines.append(
                f"| {r['n']} | {r['side']} | {r['dtype']} | {r['config']} | {r['method']} | {comp} "
                f"| {r['median_s']:.3f} | {r['mpix_per_s']:.1f} | "
                f"{'' if ratio is None else f'{ratio:.2f}'} | {peak} | {check} |"
            )
    return "\n".join(lines)


def compact_table(rows):
    lines = [
        "| N | side | dtype | config | jaxmatch compile s | jaxmatch s | jaxmatch Mpix/s "
        "| numpy s (× jax) | photutils s (× jax) | floor s (× jax) | jax XLA MB |",
        "|" + "---|" * 11,
    ]
    for case in dict.fromkeys((r["n"], r["side"], r["dtype"]) for r in rows):
        sub = [r for r in rows if (r["n"], r["side"], r["dtype"]) == case]
        floor = next((r for r in sub if r["method"] == "floor"), None)
        for cfg in dict.fromkeys(r["config"] for r in sub if r["config"] != "-"):
            get = {r["method"]: r for r in sub if r["config"] == cfg}
            jx = get.get("jaxmatch")
            if jx is None:
                continue

            def cell(r):
                return (
                    "-"
                    if r is None
                    else f"{r['median_s']:.3f} ({r['median_s'] / jx['median_s']:.2f})"
                )

            xla = (
                _mb(jx["xla_temp_bytes"] + jx["xla_output_bytes"])
                if "xla_temp_bytes" in jx
                else "-"
            )
            lines.append(
                f"| {case[0]} | {case[1]} | {case[2]} | {cfg} | {jx['compile_s']:.1f} "
                f"| {jx['median_s']:.3f} | {jx['mpix_per_s']:.1f} | {cell(get.get('numpy'))} "
                f"| {cell(get.get('photutils'))} | {cell(floor)} | {xla} |"
            )
    return "\n".join(lines)


def fit_table(rows):
    lines = [
        "| model | bins | order | coefficients | matrix rows | compile s | ms per fit "
        "| NumPy lstsq ms per fit |",
        "|" + "---|" * 8,
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(
                f"| {r['model']} | {r['bins']} | {r['order'] or '-'} | | | | "
                f"skipped: {r['skipped']} | |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['bins']} | {r['order'] or '-'} | {r['coefficients']} "
            f"| {r['matrix_rows']} | {r['compile_s']:.2f} | {r['per_fit_ms']:.3f} "
            f"| {r['numpy_per_fit_ms']:.3f} |"
        )
    return "\n".join(lines)


def slope_table(rows):
    """Fit ``t = a · N + b · N·H·W`` (a per-exposure cost, the fit, plus a per-pixel
    cost) to the jaxmatch times of each (config, dtype) with at least 3 sizes, in
    relative terms (weights 1/t): is the total time linear in the pixels once the
    pixel-independent fit is counted? R² is that of the plain residuals."""
    lines = [
        "| config | dtype | cases | ns per pixel | ms per exposure | R² | worst |residual| / t |",
        "|" + "---|" * 7,
    ]
    jax_rows = [r for r in rows if r["method"] == "jaxmatch"]
    for key in dict.fromkeys((r["config"], r["dtype"]) for r in jax_rows):
        sub = [r for r in jax_rows if (r["config"], r["dtype"]) == key]
        n = np.array([r["n"] for r in sub], dtype=float)
        pixels = np.array([r["n"] * r["side"] ** 2 for r in sub], dtype=float)
        if len(np.unique(pixels)) < 3:
            continue
        t = np.array([r["median_s"] for r in sub])
        design = np.stack([n, pixels], axis=1) / t[:, None]
        (a, b), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
        fit = a * n + b * pixels
        r2 = 1 - np.sum((t - fit) ** 2) / np.sum((t - t.mean()) ** 2)
        worst = np.max(np.abs(t - fit) / t)
        lines.append(
            f"| {key[0]} | {key[1]} | {len(sub)} | {b * 1e9:.2f} | {a * 1e3:.2f} | {r2:.4f} "
            f"| {worst:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--compact", action="store_true")
    args = ap.parse_args(argv)
    res = json.loads(Path(args.results).read_text())
    m = res["machine"]
    print(
        f"Machine: {m['nproc']} × {m['cpu']}, {m['mem_total_bytes'] / 2**30:.1f} GiB RAM; "
        f"{m['date']}; load average at start {' '.join(f'{x:.1f}' for x in m['loadavg'])}; "
        f"jax {m['versions']['jax']}, numpy {m['versions']['numpy']}, "
        f"photutils {m['versions']['photutils']}.\n"
    )
    print(compact_table(res["rows"]) if args.compact else full_table(res["rows"]))
    print("\nTotal time against N·H·W (jaxmatch):\n")
    print(slope_table(res["rows"]))
    if res.get("skipped"):
        print("\nSkipped:\n")
        for s in res["skipped"]:
            print(f"- N={s['n']}, {s['side']}², {s['dtype']}: {s['reason']}")
    if res.get("failed"):
        print("\nFailed:\n")
        for s in res["failed"]:
            print(
                f"- N={s['n']}, {s['side']}², {s['dtype']}: {s['error'].strip().splitlines()[-1]}"
            )
    if res.get("fit_only"):
        print("\nFit only (solve_least_squares vmapped over N=16, float32):\n")
        print(fit_table(res["fit_only"]))


if __name__ == "__main__":
    main()
