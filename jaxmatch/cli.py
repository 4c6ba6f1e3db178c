"""Command line: ``jaxmatch demo`` and ``jaxmatch match FILES... --out DIR``.

``jaxmatch demo`` simulates the built-in demo patch (stars, galaxies, masks,
cosmic rays, bad columns, partial coverage, per-exposure backgrounds and flux
scales), matches it with `MatchBackgroundsTask` and prints the LSST diagnostics
and the accuracy against the simulated truth.

``jaxmatch match`` reads FITS exposures, matches them (reference chosen by the
LSST cost unless ``--ref`` names one), writes the matched exposures to ``--out``
and prints the diagnostics table (optionally also as CSV or JSON).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io as _io
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxmatch`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = _config(args)
        return args.func(args, config)
    except (ValueError, TypeError, RuntimeError, OSError) as err:
        print(f"jaxmatch: error: {err}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxmatch", description="Batched background matching of exposures (JAX)."
    )
    sub = parser.add_subparsers(dest="command")

    def common(p):
        p.add_argument("--config", type=Path, help="TOML file of MatchBackgroundsConfig fields")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field, e.g. --set binSize=64 (repeatable)",
        )
        p.add_argument("--float64", action="store_true", help="compute in float64")
        p.add_argument("--table", type=Path, help="also write the table (.csv or .json)")

    demo = sub.add_parser("demo", help="simulate the built-in demo patch and match it")
    demo.add_argument("--exposures", type=int, default=6, help="number of exposures (6)")
    demo.add_argument("--size", type=int, default=512, help="image side in pixels (512)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument("--plot", type=Path, help="write a figure (needs matplotlib)")
    common(demo)
    demo.set_defaults(func=_demo)

    match = sub.add_parser("match", help="match FITS exposures and write the matched ones")
    match.add_argument("files", nargs="+", type=Path, help="FITS exposures of one patch")
    match.add_argument("--out", type=Path, required=True, help="output directory")
    match.add_argument("--ref", type=Path, help="the reference exposure (one of FILES)")
    common(match)
    match.set_defaults(func=_match)
    return parser


def _config(args):
    from ._config import MatchBackgroundsConfig

    if getattr(args, "float64", False):
        import jax

        jax.config.update("jax_enable_x64", True)
    values = {}
    if args.config is not None:
        values = MatchBackgroundsConfig.load(args.config).toDict()
    elif args.command == "demo":
        values = dict(binSize=64)  # the demo patch is small: 8 x 8 bins of 64 pixels
    fields = {f.name: f for f in dataclasses.fields(MatchBackgroundsConfig)}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY a config field")
        values[key] = _parse_value(raw, values.get(key, fields[key].default))
    return MatchBackgroundsConfig.fromDict(values)


def _parse_value(raw: str, like):
    if isinstance(like, bool):
        if raw.lower() not in ("true", "false"):
            raise ValueError(f"expected true or false, got {raw!r}")
        return raw.lower() == "true"
    if isinstance(like, int):
        return int(raw)
    if isinstance(like, float):
        return float(raw)
    if isinstance(like, tuple):
        return tuple(p for p in raw.split(",") if p)
    if like is None:
        for cast in (int, float):
            try:
                return cast(raw)
            except ValueError:
                pass
    return raw


def _demo(args, config) -> int:
    import jax.numpy as jnp

    from ._exposure import Exposure
    from ._simulate import simulate_patch
    from ._task import MatchBackgroundsTask

    if args.exposures < 2:
        raise ValueError("--exposures must be at least 2")
    t0 = time.perf_counter()
    patch = simulate_patch(args.exposures, (args.size, args.size), seed=args.seed)
    dtype = jnp.float64 if args.float64 else jnp.float32
    exposures = [
        Exposure(
            patch.images[i].astype(dtype),
            patch.masks[i],
            patch.variances[i].astype(dtype),
            mask_planes=patch.mask_planes,
        )
        for i in range(args.exposures)
    ]
    task = MatchBackgroundsTask(config)
    t1 = time.perf_counter()
    result = task.run(exposures, "demoCoadd_tempExp")
    t2 = time.perf_counter()
    infos = result.backgroundInfoList
    ref = next(i for i, s in enumerate(infos) if s.isReference)
    rows = []
    for i, info in enumerate(infos):
        truth = patch.backgrounds[ref] - patch.backgrounds[i]
        row = _row(f"exposure {i}", info)
        row["mismatch_before"] = float(np.sqrt(np.mean(truth**2)))
        if info.backgroundModel is not None:
            model = np.asarray(info.backgroundModel.getImage(), dtype=np.float64)
            row["mismatch_after"] = float(np.sqrt(np.mean((truth - model) ** 2)))
        elif info.isReference:
            row["mismatch_after"] = 0.0
        else:
            row["mismatch_after"] = None
        rows.append(row)
    sigma = float(np.sqrt(np.median(patch.variances[ref])))
    print(
        f"jaxmatch demo: {args.exposures} exposures of {args.size}x{args.size} "
        f"(seed {args.seed}), {_describe_model(config)}, "
        f"binSize {config.binSize}, {config.gridStatistic}"
    )
    _print_table(rows)
    after = [
        r["mismatch_after"]
        for r in rows
        if r["mismatch_after"] is not None and r["reference"] == "no"
    ]
    before = [r["mismatch_before"] for r in rows if r["reference"] == "no"]
    print(
        f"\naccuracy against the simulated truth (RMS of true minus fitted background "
        f"difference, per-pixel noise sigma = {sigma:.2f} ADU):"
    )
    print(
        f"  before matching: mean {np.mean(before):.3f} ADU   after: mean {np.mean(after):.3f} ADU "
        f"({np.mean(after) / sigma:.3f} sigma), worst {np.max(after):.3f} ADU"
    )
    print(f"  simulate {t1 - t0:.2f} s, match (incl. compilation) {t2 - t1:.2f} s")
    if args.table:
        _write_table(rows, args.table)
    if args.plot:
        from .plot import plot_demo

        plot_demo(patch, result, args.plot)
        print(f"  figure written to {args.plot}")
    failed = sum(1 for r in rows if r["mismatch_after"] is None)
    return 1 if failed else 0


def _describe_model(config) -> str:
    if config.usePolynomial:
        return f"Chebyshev order {config.order}"
    return f"spline {config.interpStyle}"


def _match(args, config) -> int:
    from ._task import MatchBackgroundsTask
    from .io import readExposure, writeExposure

    files = list(args.files)
    if len({f.resolve() for f in files}) != len(files):
        raise ValueError("the same file is listed twice")
    if args.ref is not None and args.ref.resolve() not in {f.resolve() for f in files}:
        raise ValueError(f"--ref {args.ref} is not one of the input files")
    args.out.mkdir(parents=True, exist_ok=True)
    exposures = []
    for f in files:
        try:
            exposures.append(readExposure(f))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read {f}: {err}") from None
    shapes = {tuple(e.image.shape) for e in exposures}
    if len(shapes) > 1:
        raise ValueError(
            f"the exposures have different shapes {sorted(shapes)}; all must share one pixel grid"
        )
    task = MatchBackgroundsTask(config)
    refIndex = None if args.ref is None else [f.resolve() for f in files].index(args.ref.resolve())
    result = task.run(
        exposures, "fits", refExpDataRef=None if refIndex is None else exposures[refIndex]
    )
    rows = []
    for f, exp, info in zip(files, exposures, result.backgroundInfoList):
        rows.append(_row(str(f), info))
        if info.backgroundModel is not None:
            matched = dataclasses.replace(exp, image=exp.image + info.backgroundModel.getImage())
            writeExposure(matched, args.out / f.name)
        elif info.isReference:
            writeExposure(exp, args.out / f.name)
    _print_table(rows)
    if args.table:
        _write_table(rows, args.table)
    return 1 if any(r["fitRMS"] is None and r["reference"] == "no" for r in rows) else 0


def _row(name, info) -> dict:
    return dict(
        exposure=name,
        reference="yes" if info.isReference else "no",
        fitRMS=info.fitRMS,
        matchedMSE=info.matchedMSE,
        diffImVar=info.diffImVar,
    )


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _print_table(rows) -> None:
    keys = list(rows[0])
    cells = [[_fmt(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))


def _write_table(rows, path: Path) -> None:
    from .io import atomic_write

    if path.suffix.lower() == ".json":
        text = json.dumps(rows, indent=2)
    elif path.suffix.lower() == ".csv":
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    else:
        raise ValueError(f"--table {path}: use a .csv or .json file name")
    atomic_write(path, lambda f: f.write(text.encode()))


if __name__ == "__main__":
    sys.exit(main())
