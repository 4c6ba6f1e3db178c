"""Command line: ``jaxmatch demo`` and ``jaxmatch match FILES... --out DIR``.

``jaxmatch demo`` simulates the built-in demo patch (stars, galaxies, masks,
cosmic rays, bad columns, partial coverage, per-exposure backgrounds and flux
scales), matches it with `MatchBackgroundsTask` and prints the LSST diagnostics
and the accuracy against the simulated truth; ``--plot fig.png`` also draws it.

``jaxmatch match FILES... --out DIR`` matches FITS files of one patch (any
layout: LSST multi-extension, plain single images, multi-extension files with
several images such as ``CCD1``/``CCD2`` (each matched to the same extension of
the reference), tile-compressed ``.fz`` or gzip/bzip2 files) and writes, for each
input ``NAME.fits``, into ``--out``:

- ``NAME.fits`` (the input's name): the matched file, in the input's layout, with
  every header card of the input (WCS with SIP/TPV distortion, alternate WCS,
  BUNIT, GAIN, ...) and jaxmatch's cards (`jaxmatch._filematch`);
- ``NAME.model.fits``: the fitted background model (`jaxmatch.io.readModel`), with
  the config (``NAME.CCD1.model.fits``, ... for several images; none for the
  reference);
- ``NAME.bkg.fits`` with ``--model-image``: the model as an image (for ds9).

Everything is checked before a pixel is read: options, outputs that would collide
with each other, with an input, with the table, or with an existing file that is
not a jaxmatch output of the same input (one line naming both), and that ``--out``
and the table's folder can be written. Hidden temporary files ``.NAME.<random>.tmp``
a killed run left for these outputs are removed. Every file is written whole or
not at all. A file that cannot be read, fitted or written is reported on one line
and the others go on. Plain images (no mask planes) get their sources detected into
DETECTED first (``--no-detect`` to skip). Exposures are read and fitted in chunks
of ``--chunk-size`` (memory stays bounded). ``--resume`` (alias
``--skip-existing``) keeps the outputs of an earlier run only when they record this
run's input checksum, config and reference; the others are redone (and it says
why). The table is printed and, with ``--table``, written as ECSV, CSV, FITS or
JSON (by extension) with units and a status column. A progress bar (tqdm) shows
reading, fitting (with compilation) and writing when stderr is a terminal
(``--progress`` / ``--no-progress`` to choose).

Precision: JAX computes in float32 unless ``--float64`` is given, so without it
float64 (and integer) images are rounded to float32 when read and written as
float32; float32 images, the usual case, are written in float32 either way.

Configuration: ``--config FILE`` (TOML of `MatchBackgroundsConfig` fields) and
``--set KEY=VALUE`` overrides (repeatable; ``none`` for an optional field, commas
for ``badMaskPlanes``).

Exit status: 0 every file matched (or kept by ``--resume``); 1 some files failed
(unreadable, mismatched, a failed fit, a failed write): each is named on stderr,
every other output is written; 2 nothing was done: a bad command line or config,
outputs that collide, an ``--out`` or ``--table`` folder that cannot be written;
130 interrupted. Errors are one line on stderr, ``jaxmatch: error: ...``, naming
the file.

In Python, ``jaxmatch.cli.main(["match", ...])`` returns the exit status (it never
calls ``sys.exit``; ``--float64`` enables JAX's float64 for that call only, and the
caller's setting is restored on return: a survey worker or a notebook keeps its
own precision) and `jaxmatch._filematch.match_files` does the same work and
returns a `MatchReport`.
"""
# pyright: reportArgumentType=false, reportAttributeAccessIssue=false, reportCallIssue=false
# (Struct fields are dynamic, and Optional models are checked before use.)

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import sys
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
    import jax

    x64 = jax.config.jax_enable_x64
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
    finally:
        # `--float64` is this command's precision, not the calling process's.
        if jax.config.jax_enable_x64 != x64:
            jax.config.update("jax_enable_x64", x64)


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
        p.add_argument(
            "--table", type=Path, help="also write the table (.ecsv, .csv, .fits or .json)"
        )

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
        description="Match FITS exposures of one patch; write NAME.fits (matched, in the "
        "input's layout and with its header cards) and NAME.model.fits (background model) "
        "into --out.",
        epilog="exit status: 0 every file matched (or kept); 1 some files failed (each "
        "named on stderr, the others written); 2 nothing done (bad options, colliding "
        "outputs, an --out or --table folder that cannot be written); 130 interrupted.",
    )
    match.add_argument("files", nargs="+", type=Path, help="FITS exposures of one patch")
    match.add_argument("--out", type=Path, required=True, help="output directory")
    match.add_argument("--ref", type=Path, help="the reference exposure (one of FILES)")
    match.add_argument(
        "--resume",
        "--skip-existing",
        dest="resume",
        action="store_true",
        help="keep the outputs of an earlier run when they record this run's inputs, "
        "config and reference; redo the others (finish an interrupted run)",
    )
    match.add_argument(
        "--model-image",
        action="store_true",
        help="also write the background model as an image, NAME.bkg.fits",
    )
    match.add_argument(
        "--detect",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mark sources in DETECTED before binning (default: plain images only)",
    )
    match.add_argument(
        "--chunk-size",
        type=int,
        default=16,  # jaxmatch._taskpath.DEFAULT_CHUNK_SIZE (not imported: fast --help)
        help="exposures read and fitted at once (memory bound; default 16)",
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
    from .rubin.demo import add_parser as add_lsst_demo
    from .survey import add_parser as add_survey

    add_survey(sub)  # `jaxmatch survey` (jaxmatch/survey/)
    add_lsst_demo(sub)  # `jaxmatch lsst-demo` (jaxmatch/rubin/demo.py)
    return parser


# -- configuration ----------------------------------------------------------------------
def _config(args):
    from ._config import MatchBackgroundsConfig

    if getattr(args, "float64", False):
        import jax

        jax.config.update("jax_enable_x64", True)
    if args.table is not None:
        from ._filematch import table_format

        try:
            table_format(args.table)
        except ValueError as err:
            raise UsageError(str(err)) from None
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
        _write_table(rows, args.table, config)
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
        raise ImportError(
            "--plot needs matplotlib: pip install matplotlib (or, in a source checkout, "
            "pip install '.[plot]')"
        ) from None
    if not path.parent.is_dir():
        raise UsageError(f"--plot {path}: the folder {path.parent} does not exist")


def _describe_model(config) -> str:
    if config.usePolynomial:
        return f"Chebyshev order {config.order}"
    return f"spline {config.interpStyle}"


# -- match ------------------------------------------------------------------------------
def _match(args, config) -> int:
    from ._filematch import match_files
    from ._outputs import PlanError
    from .io import check_noise

    if args.chunk_size < 1:
        raise UsageError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    try:
        check_noise(args.gain, args.read_noise)
    except ValueError as err:
        raise UsageError(f"--gain / --read-noise: {err}") from None
    show = sys.stderr.isatty() if args.progress is None else args.progress
    if args.tune:
        config = _tuned_config(args, config)
    try:
        report = match_files(
            args.files,
            args.out,
            config,
            ref=args.ref,
            resume=args.resume,
            model_image=args.model_image,
            gain=args.gain,
            read_noise=args.read_noise,
            detect=args.detect,
            chunk_size=args.chunk_size,
            table=args.table,
            say=_say,
            progress=_progress if show else None,
        )
    except PlanError as err:
        raise UsageError(str(err)) from None
    except OSError as err:  # --out or the table's folder: found before any work
        _error(err)
        return 2
    _print_table([_printed(r) for r in report.rows])
    note = f", {report.kept} kept (--resume)" if args.resume else ""
    failed = f", {report.failed} failed" if report.failed else ""
    _say(f"{report.written} file(s) written to {args.out}{note}{failed}")
    return report.exit_status


def _tuned_config(args, config):
    """``--tune``: choose the config on the inputs first (`jaxmatch.autotune`); it is
    written to ``OUT/chosen.toml``."""
    from ._autotune import tune_for_command_line
    from .io import readExposure

    files = [Path(f) for f in args.files]
    exposures = [readExposure(f, gain=args.gain, read_noise=args.read_noise) for f in files]
    resolved = [f.resolve() for f in files]
    reference = None
    if args.ref is not None and Path(args.ref).resolve() in resolved:
        reference = resolved.index(Path(args.ref).resolve())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return tune_for_command_line(exposures, config, args.tune_budget, reference, args.out)


def _say(message: str) -> None:
    print(f"jaxmatch: {message}", file=sys.stderr)


def _printed(row) -> dict:
    name = row.file if row.image in ("PRIMARY", "IMAGE", "*") else f"{row.file}[{row.image}]"
    return dict(
        exposure=name,
        status=row.status,
        fitRMS=row.fitRMS,
        matchedMSE=row.matchedMSE,
        diffImVar=row.diffImVar,
        model=row.model,
    )


def _outputs(out: Path, path: Path) -> tuple[Path, Path]:
    """``(out/NAME, out/STEM.model.fits)`` for an input ``NAME`` (`jaxmatch._outputs`)."""
    from ._outputs import output_names

    outputs = output_names(out, path, ["*"], False)
    return outputs.matched, outputs.models["*"]


def _progress(iterable=None, **kwargs):
    """A tqdm progress bar on stderr, or a silent stand-in without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        from ._filematch import no_progress

        return no_progress(iterable)
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
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value) if value != "" else "-"


def _print_table(rows) -> None:
    if not rows:
        return
    keys = list(rows[0])
    cells = [[_fmt(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)).rstrip())
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())


def _write_table(rows, path: Path, config=None) -> None:
    from ._filematch import summary_table, write_table

    write_table(summary_table(rows, config), path)


if __name__ == "__main__":
    sys.exit(main())
