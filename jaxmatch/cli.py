"""Command line: ``jaxmatch demo`` and ``jaxmatch match FILES... --out DIR``.

``jaxmatch demo`` simulates the built-in demo patch (stars, galaxies, masks,
cosmic rays, bad columns, partial coverage, per-exposure backgrounds and flux
scales), matches it with `MatchBackgroundsTask` and prints the LSST diagnostics
and the accuracy against the simulated truth; ``--plot fig.png`` also draws it.

``jaxmatch match`` reads FITS exposures (LSST multi-extension, or plain images:
``--gain`` / ``--read-noise`` then give their variance), matches them (reference
chosen by the LSST cost unless ``--ref`` names one) and writes, for each input
``NAME.fits``, into ``--out``:

- ``NAME.fits``: the matched exposure (image + model; mask and variance as read),
  with the input's primary header and WCS;
- ``NAME.model.fits``: the fitted background model (`jaxmatch.io.readModel`),
  with the config it was fitted with (not for the reference, whose model is 0).

and prints the diagnostics table (``--table`` also writes it as CSV or JSON).
Before reading anything it creates ``--out`` and checks that files can be written
there, and removes the hidden temporary files ``.NAME.<random>.tmp`` that a run
killed mid-write left for these outputs (so two runs must not write the same
outputs at the same time). Every file is written whole or not at all.
``--skip-existing`` leaves the exposures whose outputs all exist untouched, so a
rerun after an interrupted run finishes the rest (every exposure is still read
and fitted, so the reference and the table are those of a full run). A progress
bar (tqdm) shows reading, fitting and writing when stderr is a terminal
(``--progress`` / ``--no-progress`` to choose).

Precision: JAX computes in float32 unless ``--float64`` is given, so without it
float64 (and integer) images are rounded to float32 when read and written as
float32; float32 images, the usual case, are written in float32 either way.

Configuration: ``--config FILE`` (TOML of `MatchBackgroundsConfig` fields) and
``--set KEY=VALUE`` overrides (repeatable; ``none`` for an optional field, commas
for ``badMaskPlanes``).

Exit status: 0 success; 1 a problem with the data (a missing, unreadable or
mismatched file, a failed fit) or with writing (an output folder that cannot be
created or written, a full disk: the outputs written before stay complete); 2 a bad
command line or config; 130 interrupted. Errors are one line on stderr,
``jaxmatch: error: ...``, naming the file.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import io as _io
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_FITS_SUFFIXES = (".fits", ".fit", ".fts")
_COMPRESSED_SUFFIXES = (".gz", ".fz", ".bz2")


class UsageError(ValueError):
    """A bad command line or config (exit status 2)."""


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
    except UsageError as err:
        _error(err)
        return 2
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as err:
        _error(err)
        return 1
    except KeyboardInterrupt:
        print("jaxmatch: interrupted", file=sys.stderr)
        return 130


def _error(err: BaseException) -> None:
    message = str(err)
    if isinstance(err, OSError) and err.strerror:  # without the "[Errno N]" prefix
        message = err.strerror if err.filename is None else f"{err.filename}: {err.strerror}"
    message = " ".join(message.split()) or type(err).__name__  # always one line
    print(f"jaxmatch: error: {message}", file=sys.stderr)


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
        p.add_argument(
            "--float64",
            action="store_true",
            help="allow float64 (JAX's default is float32: float64 inputs are rounded to it)",
        )
        p.add_argument("--table", type=Path, help="also write the table (.csv or .json)")

    demo = sub.add_parser("demo", help="simulate the built-in demo patch and match it")
    demo.add_argument("--exposures", type=int, default=6, help="number of exposures (6)")
    demo.add_argument("--size", type=int, default=512, help="image side in pixels (512)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument("--plot", type=Path, help="write a figure, e.g. fig.png (needs matplotlib)")
    common(demo)
    demo.set_defaults(func=_demo)

    match = sub.add_parser(
        "match",
        help="match FITS exposures and write the matched ones and their models",
        description="Match FITS exposures of one patch; write NAME.fits (matched) and "
        "NAME.model.fits (background model) into --out.",
    )
    match.add_argument("files", nargs="+", type=Path, help="FITS exposures of one patch")
    match.add_argument("--out", type=Path, required=True, help="output directory")
    match.add_argument("--ref", type=Path, help="the reference exposure (one of FILES)")
    match.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep the outputs of exposures already written (finish an interrupted run)",
    )
    match.add_argument(
        "--gain", type=float, help="[e-/ADU] variance of plain images: image/gain + read_noise^2"
    )
    match.add_argument("--read-noise", type=float, help="[ADU] read noise of plain images")
    match.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars (default: when stderr is a terminal)",
    )
    match.add_argument(
        "--tune",
        action="store_true",
        help="choose binSize, order, roughness and clipping by held-out loss first; "
        "the chosen config is written to OUT/chosen.toml (reuse it with --config)",
    )
    match.add_argument(
        "--tune-budget", type=float, default=60.0, metavar="SECONDS", help="tuning time (60)"
    )
    common(match)
    match.set_defaults(func=_match)
    return parser


# -- configuration ----------------------------------------------------------------------
def _config(args):
    from ._config import MatchBackgroundsConfig

    if getattr(args, "float64", False):
        import jax

        jax.config.update("jax_enable_x64", True)
    if args.table is not None and args.table.suffix.lower() not in (".csv", ".json"):
        raise UsageError(f"--table {args.table}: use a .csv or .json file name")
    values = {}
    if args.config is not None:
        if not args.config.is_file():
            raise UsageError(f"--config {args.config}: no such file")
        try:
            values = MatchBackgroundsConfig.load(args.config).toDict()
        except (ValueError, TypeError) as err:  # tomllib.TOMLDecodeError is a ValueError
            raise UsageError(f"--config {args.config}: {err}") from None
    elif args.command == "demo":
        values = dict(binSize=64)  # the demo patch is small: 8 x 8 bins of 64 pixels
    fields = {f.name: f for f in dataclasses.fields(MatchBackgroundsConfig)}
    for item in args.set:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"--set {item}: unknown config field {key!r}{hint}")
        try:
            values[key] = _parse_value(raw.strip(), str(fields[key].type))
        except ValueError as err:
            raise UsageError(f"--set {item}: {key} {err}") from None
    try:
        return MatchBackgroundsConfig.fromDict(values)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None  # the config's own message names the field


def _parse_value(raw: str, type_name: str):
    """``raw`` as a value of the config field type ``type_name`` (e.g. ``"int | None"``)."""
    optional = "None" in type_name
    base = type_name.replace("| None", "").replace("None |", "").strip()
    if optional and raw.lower() in ("none", "null"):
        return None
    if base == "bool":
        truth = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        if raw.lower() not in truth:
            raise ValueError(f"takes true or false, got {raw!r}")
        return truth[raw.lower()]
    if base == "int":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"takes an integer, got {raw!r}") from None
    if base == "float":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"takes a number, got {raw!r}") from None
    if base.startswith("tuple"):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    return raw


# -- demo -------------------------------------------------------------------------------
def _demo(args, config) -> int:
    import jax.numpy as jnp

    from ._exposure import Exposure
    from ._simulate import simulate_patch
    from ._task import MatchBackgroundsTask

    if args.exposures < 2:
        raise UsageError("--exposures must be at least 2")
    if args.plot is not None:
        _check_plot_target(args.plot)
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
    if after:
        print(
            f"  before matching: mean {np.mean(before):.3f} ADU   after: mean "
            f"{np.mean(after):.3f} ADU ({np.mean(after) / sigma:.3f} sigma), "
            f"worst {np.max(after):.3f} ADU"
        )
    else:
        print(f"  before matching: mean {np.mean(before):.3f} ADU   after: every fit failed")
    print(f"  simulate {t1 - t0:.2f} s, match (incl. compilation) {t2 - t1:.2f} s")
    if args.table:
        _write_table(rows, args.table)
    if args.plot:
        from .plot import plot_demo

        plot_demo(patch, result, args.plot, config=config)
        print(f"  figure written to {args.plot}")
    failed = sum(1 for r in rows if r["mismatch_after"] is None)
    return 1 if failed else 0


def _check_plot_target(path: Path) -> None:
    """Fail before the work, not after it: matplotlib present, a writable folder."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'jaxmatch[plot]'") from None
    if not path.parent.is_dir():
        raise UsageError(f"--plot {path}: the folder {path.parent} does not exist")


def _describe_model(config) -> str:
    if config.usePolynomial:
        return f"Chebyshev order {config.order}"
    return f"spline {config.interpStyle}"


# -- match ------------------------------------------------------------------------------
def _match(args, config) -> int:
    from ._task import MatchBackgroundsTask
    from .io import applyModel, readExposureWithMetadata, writeExposure, writeModel

    files = list(args.files)
    resolved = [f.resolve() for f in files]
    if len(set(resolved)) != len(files):
        twice = next(f for f, r in zip(files, resolved) if resolved.count(r) > 1)
        raise UsageError(f"{twice} is listed twice")
    if args.ref is not None and args.ref.resolve() not in resolved:
        raise UsageError(f"--ref {args.ref} is not one of the input files")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a directory")
    outputs = [_outputs(args.out, f) for f in files]
    seen: dict[str, Path] = {}
    inputs = set(resolved)
    for f, (image_out, model_out) in zip(files, outputs):
        if image_out.name in seen:
            raise UsageError(f"{seen[image_out.name]} and {f} would both be written to {image_out}")
        seen[image_out.name] = f
        if image_out.resolve() in inputs or model_out.resolve() in inputs:
            raise UsageError(f"--out {args.out}: writing {f}'s outputs would overwrite an input")
    for f in files:  # every missing file is found before the slow part starts
        if not f.exists():
            raise FileNotFoundError(f"no such file: {f}")
    targets = [p for pair in outputs for p in pair] + ([args.table] if args.table else [])
    _prepare_out(args.out, targets)
    show = sys.stderr.isatty() if args.progress is None else args.progress

    read = []
    for f in _progress(files, desc="reading", show=show, unit="file"):
        read.append(readExposureWithMetadata(f, gain=args.gain, read_noise=args.read_noise))
    exposures = [r.exposure for r in read]
    first = exposures[0].getBBoxShape()
    for f, e in zip(files, exposures):
        if e.getBBoxShape() != first:
            raise ValueError(
                f"{f} is {e.getBBoxShape()[0]}x{e.getBBoxShape()[1]} pixels but {files[0]} is "
                f"{first[0]}x{first[1]}; all exposures must share one pixel grid"
            )

    refIndex = None if args.ref is None else resolved.index(args.ref.resolve())
    if args.tune:
        from ._autotune import tune_for_command_line

        config = tune_for_command_line(exposures, config, args.tune_budget, refIndex, args.out)
    task = MatchBackgroundsTask(config)
    with _progress(None, total=1, desc="fitting", show=show, unit="batch") as bar:
        result = task.run(
            exposures, "fits", refExpDataRef=None if refIndex is None else exposures[refIndex]
        )
        bar.update(1)
    infos = result.backgroundInfoList
    refIndex = next(i for i, s in enumerate(infos) if s.isReference)

    rows, written, kept = [], 0, 0
    for i in _progress(range(len(files)), desc="writing", show=show, unit="file"):
        f, info, (image_out, model_out) = files[i], infos[i], outputs[i]
        rows.append(_row(str(f), info))
        if info.backgroundModel is None and not info.isReference:
            print(f"jaxmatch: warning: the fit of {f} failed; nothing written", file=sys.stderr)
            continue
        wanted = [image_out] if info.isReference else [image_out, model_out]
        if args.skip_existing and all(p.exists() for p in wanted):
            kept += 1
            continue
        exposure, header, wcs = read[i]
        header = header.copy()
        if info.isReference:
            header.add_history("jaxmatch: the reference of the background matching")
            matched = exposure
        else:
            header.add_history(f"jaxmatch: background matched to {files[refIndex].name}")
            header.add_history(f"jaxmatch: background model in {model_out.name}")
            writeModel(
                info.backgroundModel,
                model_out,
                config=config,
                header={"JMREF": files[refIndex].name, "JMSOURCE": f.name},
            )
            matched = applyModel(info.backgroundModel, exposure)
        writeExposure(matched, image_out, header=header, wcs=wcs)
        written += 1
    _print_table(rows)
    note = f", {kept} kept (--skip-existing)" if args.skip_existing else ""
    print(f"jaxmatch: {written} exposure(s) written to {args.out}{note}", file=sys.stderr)
    if args.table:
        _write_table(rows, args.table)
    return 1 if any(r["fitRMS"] is None and r["reference"] == "no" for r in rows) else 0


def _prepare_out(out: Path, targets: list[Path]) -> None:
    """Create ``out``, check that files can be written there, remove stale temporary files.

    Called before reading and fitting, so an output folder that cannot be written
    fails at once. The stale files are those `atomic_write` left for ``targets``
    when a run was killed mid-write (`remove_stale_temps`).
    """
    from .io import remove_stale_temps

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise OSError(err.errno, f"cannot write into --out {out}: {err.strerror}") from err
    for stale in remove_stale_temps(targets):
        print(f"jaxmatch: removed {stale}, left by an interrupted run", file=sys.stderr)


def _outputs(out: Path, path: Path) -> tuple[Path, Path]:
    """``(out/NAME.fits, out/NAME.model.fits)`` for an input ``NAME.fits[.gz]``."""
    stem = path.name
    for suffixes in (_COMPRESSED_SUFFIXES, _FITS_SUFFIXES):
        for suffix in suffixes:
            if stem.lower().endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
                break
    return out / f"{stem}.fits", out / f"{stem}.model.fits"


class _NoBar:
    def __init__(self, iterable=None):
        self._iterable = iterable

    def __iter__(self):
        return iter(self._iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass


def _progress(iterable=None, *, show: bool, **kwargs):
    """A tqdm progress bar on stderr, or a silent stand-in (also without tqdm)."""
    if show:
        try:
            from tqdm import tqdm
        except ImportError:
            show = False
    if not show:
        return _NoBar(iterable)
    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kwargs)


# -- tables -----------------------------------------------------------------------------
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
        raise UsageError(f"--table {path}: use a .csv or .json file name")
    atomic_write(path, lambda f: f.write(text.encode()))


if __name__ == "__main__":
    sys.exit(main())
