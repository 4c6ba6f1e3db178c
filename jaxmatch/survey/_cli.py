"""``jaxmatch survey``: the command line of `run_survey`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from ._client import _distributed, run_survey
from ._records import PatchResult, SurveyUsageError


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``jaxmatch survey`` to the command line's sub-parsers."""
    p = sub.add_parser(
        "survey",
        help="match many patches (folders of FITS exposures) on a Dask cluster",
        description="Match each PATCH_DIR (a folder of FITS exposures of one patch) as "
        "'jaxmatch match' does, into OUT/<patch name>/, on an embedded Dask LocalCluster "
        "or a running Dask scheduler. Exit status 0 when every patch succeeded, 1 when "
        "one failed (see the table), 2 on a bad command line. "
        'Needs pip install "jaxmatch[survey]".',
    )
    p.add_argument("patches", nargs="+", type=Path, metavar="PATCH_DIR", help="patch folders")
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (one sub-folder per patch)"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes of the embedded LocalCluster, one thread each (2)",
    )
    where.add_argument(
        "--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://host:8786"
    )
    where.add_argument(
        "--scheduler-file", type=Path, help="the JSON file of a running Dask scheduler"
    )
    p.add_argument(
        "--ref",
        metavar="PATTERN",
        help="file-name pattern of each patch's reference, e.g. 'visit42*'",
    )
    p.add_argument(
        "--skip-existing", action="store_true", help="keep outputs already written (resume)"
    )
    p.add_argument("--gain", type=float, help="[e-/ADU] for plain images (see jaxmatch match)")
    p.add_argument("--read-noise", type=float, help="[ADU] for plain images (see jaxmatch match)")
    p.add_argument(
        "--compilation-cache",
        type=Path,
        metavar="DIR",
        help="JAX's persistent compilation cache, shared by the workers",
    )
    p.add_argument(
        "--dashboard-address",
        default="127.0.0.1:8787",
        help="the embedded cluster's dashboard (127.0.0.1:8787; needs bokeh)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar over the patches (default: when stderr is a terminal)",
    )
    p.add_argument("--config", type=Path, help="TOML file of MatchBackgroundsConfig fields")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )
    p.add_argument("--float64", action="store_true", help="allow float64 (see jaxmatch match)")
    p.add_argument("--table", type=Path, help="write the survey table (.csv or .json)")
    p.set_defaults(func=_command)
    return p


def _command(args, config) -> int:
    """``jaxmatch survey``: the options are checked by the command line already."""
    from ..cli import UsageError

    logging.getLogger("distributed").setLevel(logging.WARNING)  # not its INFO chatter
    options: list[str] = []
    if args.config is not None:
        options += ["--config", str(args.config.absolute())]
    for item in args.set:
        options += ["--set", item]
    options += ["--float64"] if args.float64 else []
    options += ["--gain", repr(args.gain)] if args.gain is not None else []
    options += ["--read-noise", repr(args.read_noise)] if args.read_noise is not None else []
    try:
        with _client(args) as client:
            survey = run_survey(
                args.patches,
                args.out,
                client=client,
                workers=args.workers,
                options=options,
                ref=args.ref,
                skip_existing=args.skip_existing,
                table=args.table,
                compilation_cache=args.compilation_cache,
                dashboard_address=args.dashboard_address,
                progress=args.progress,
                on_result=_report,
            )
    except SurveyUsageError as err:
        raise UsageError(str(err)) from None
    # astropy annotates Table[name] as a union that includes Table (not iterable)
    patch, status = survey["patch"], survey["patch_status"]
    failed = sorted({p for p, s in zip(patch, status) if s != "ok"})  # pyright: ignore[reportArgumentType]
    patches = len(set(patch))  # pyright: ignore[reportArgumentType]
    print(
        f"jaxmatch: {patches - len(failed)} of {patches} patch(es) matched into {args.out}"
        + (f"; failed: {', '.join(failed)}" if failed else ""),
        file=sys.stderr,
    )
    if args.table:
        print(f"jaxmatch: survey table written to {args.table}", file=sys.stderr)
    return 1 if failed else 0


@contextlib.contextmanager
def _client(args):
    """A client of the scheduler named on the command line, or None (embedded cluster)."""
    if args.scheduler is None and args.scheduler_file is None:
        yield None
        return
    distributed = _distributed()
    if args.scheduler_file is not None:
        client = distributed.Client(scheduler_file=str(args.scheduler_file), timeout="30s")
    else:
        client = distributed.Client(args.scheduler, timeout="30s")
    with client:
        yield client


def _report(result: PatchResult) -> None:
    status = "ok" if result.exit_code == 0 else f"failed ({result.message})"
    print(
        f"{result.name}: {result.exposures} exposure(s), {status}, "
        f"{result.seconds:.2f} s, {result.compiles} compilation(s), {result.worker}"
    )
