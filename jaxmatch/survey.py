"""Survey scale: ``jaxmatch match`` over many patches on a Dask cluster.

A survey is many patches; a patch is one folder of FITS exposures of one sky patch
on one pixel grid. `run_survey` (and ``jaxmatch survey PATCH_DIR... --out OUT``)
sends one task per patch to a Dask ``distributed`` cluster. Each task runs the
``jaxmatch match`` command in the worker's process::

    jaxmatch match PATCH_DIR/*.fits --out OUT/<patch> --table OUT/<patch>/table.json [options]

so ``OUT/<patch>/`` holds exactly what ``jaxmatch match`` writes for that patch
(matched exposures, model files, its table), and the survey table has one row per
exposure with the patch's name and outcome. The engine is either an embedded
``distributed.LocalCluster`` (``workers`` processes with one thread each, bound to
127.0.0.1) or any running Dask scheduler (``client=``, ``--scheduler``,
``--scheduler-file``): ``dask scheduler`` / ``dask worker``, dask-jobqueue (SLURM,
PBS), Kubernetes.

Failures
--------
- A worker that dies (killed, out of memory) loses nothing: Dask sends its patch to
  another worker; every output file is written whole or not at all and the next
  run of a patch removes the temporary files a killed one left, so the outputs
  equal those of a run without the failure. A patch that kills
  ``distributed.scheduler.allowed-failures`` + 1 workers (default 3 + 1) is
  reported as failed.
- A patch whose data are bad (an unreadable file, a failed fit, mismatched
  shapes, no FITS file) is reported in the table (``patch_status`` ``"failed"``,
  ``patch_message`` saying why, as ``jaxmatch match`` would) and the survey goes
  on. The command's exit status is 0 only when every patch succeeded.
- ``skip_existing`` (``--skip-existing``) passes the match command's resume flag
  to every patch, so a rerun keeps the outputs already written and finishes the
  rest.

Efficiency
----------
JAX keeps the programs it compiled in the process that compiled them, so a
long-lived worker compiles once per (image shape, exposure count, config) and
reuses the programs for every later patch of the same kind: the table's
``patch_compiles`` counts the XLA compilations each patch caused (0 once the
worker is warm). ``compilation_cache`` (``--compilation-cache DIR``) also shares
them between worker processes and runs through JAX's persistent cache, so a new
or restarted worker loads instead of compiling. Each worker reads only its
patch's files; its memory is that of one ``jaxmatch match`` run on one patch.

Dask is an optional dependency: ``pip install "jaxmatch[survey]"``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fnmatch
import io as _io
import json
import logging
import math
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz")
"""File names (lower case) that a patch folder's exposures end with; others are ignored."""

PATCH_TABLE = "table.json"
"""The name of the per-patch table that ``jaxmatch match --table`` writes in ``OUT/<patch>``."""

INSTALL_HINT = 'pip install "jaxmatch[survey]" (in a source checkout: pip install ".[survey]")'


PATCH_COLUMNS = (
    "patch_status",
    "patch_exit",
    "patch_message",
    "patch_seconds",
    "patch_compiles",
    "worker",
)
"""The survey table's per-patch columns, after ``patch`` and the match table's columns."""


class SurveyUsageError(ValueError):
    """A bad survey request (missing patch folder, two patches of one name, bad options)."""


class PatchJob(NamedTuple):
    """One patch to match: what a worker needs, all plain strings (picklable)."""

    name: str
    """The patch name: the folder's name, also the output sub-folder's."""
    folder: str
    """[absolute path] the folder of the patch's FITS exposures."""
    out: str
    """[absolute path] ``OUT/<name>``, the match command's ``--out``."""
    options: tuple[str, ...]
    """Options of ``jaxmatch match`` after the files and ``--out`` / ``--table``."""
    ref: str | None = None
    """A file-name pattern (``fnmatch``) picking the reference in the patch, or None."""
    compilation_cache: str | None = None
    """A folder for JAX's persistent compilation cache, shared by the workers, or None."""


class PatchResult(NamedTuple):
    """What one patch's task returns to the client."""

    name: str
    exit_code: int
    """The match command's exit status (0 success, 1 bad data or failed fit, 2 usage)."""
    message: str
    """The command's errors and warnings, one line ("" when there were none)."""
    rows: tuple[dict[str, Any], ...]
    """The per-patch table's rows (one per exposure), empty when none was written."""
    exposures: int
    """The number of FITS files found in the patch folder."""
    seconds: float
    """[s] the time the task took in the worker."""
    compiles: int
    """XLA compilations during the task (persistent-cache loads included)."""
    worker: str
    """``host:pid`` of the worker process."""


# -- the worker side ----------------------------------------------------------------------
def patch_files(folder: str | os.PathLike) -> list[Path]:
    """The FITS exposures of a patch folder, sorted by name.

    Files whose names end with one of `FITS_SUFFIXES` (any case) count; hidden files
    (``.NAME``, e.g. the temporary files of an interrupted write) and everything else
    are ignored, as are sub-folders.
    """
    folder = Path(folder)
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.name.lower().endswith(FITS_SUFFIXES) and p.is_file()
    )


_LOCK = threading.Lock()  # one patch at a time per process, even on multi-thread workers
_COMPILES = [0]
_LISTENING = [False]


def _count_compile(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


def _prepare_process(cache: str | None) -> None:
    """Count compilations; point JAX's persistent cache at ``cache`` (before compiling)."""
    import jax

    if not _LISTENING[0]:
        jax.monitoring.register_event_duration_secs_listener(_count_compile)
        _LISTENING[0] = True
    if cache is not None and jax.config.jax_compilation_cache_dir != cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        # jaxmatch compiles ~100 small programs per configuration: keep them all.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def match_patch(job: PatchJob) -> PatchResult:
    """Run ``jaxmatch match`` on one patch in this process; the task a worker runs.

    Lists the patch's FITS files (`patch_files`), picks the reference named by
    ``job.ref`` (none matching: the LSST cost chooses; several: the patch fails),
    removes the per-patch table of an earlier run, then calls
    ``jaxmatch.cli.main(["match", *files, "--out", job.out, "--table",
    job.out/table.json, *job.options])`` and reads the table it wrote. The
    command's standard output (its table) is dropped and its standard error kept
    as the message. Without Dask this is the single-machine run of one patch.
    """
    from . import cli

    with _LOCK:
        _prepare_process(job.compilation_cache)
        start, compiles0 = time.perf_counter(), _COMPILES[0]
        table = Path(job.out) / PATCH_TABLE
        files: list[Path] = []
        rows: tuple[dict[str, Any], ...] = ()
        try:
            files = patch_files(job.folder)
            argv = _match_argv(job, files, table)
            table.unlink(missing_ok=True)  # an earlier run's table is no answer
            exit_code, message = _call(cli.main, argv)
            rows = _read_rows(table)
        except _PatchError as err:
            exit_code, message = err.args
        except OSError as err:
            exit_code, message = 1, f"{job.folder}: {err.strerror or err}"
        return PatchResult(
            name=job.name,
            exit_code=exit_code,
            message=message,
            rows=rows,
            exposures=len(files),
            seconds=time.perf_counter() - start,
            compiles=_COMPILES[0] - compiles0,
            worker=f"{socket.gethostname()}:{os.getpid()}",
        )


class _PatchError(Exception):
    """``(exit status, message)`` of a patch that fails before the match command runs."""


def _match_argv(job: PatchJob, files: list[Path], table: Path) -> list[str]:
    """The match command line of a patch; `_PatchError` when it has none."""
    if not files:
        raise _PatchError(1, f"no FITS file in {job.folder}")
    refs = [f for f in files if fnmatch.fnmatch(f.name, job.ref)] if job.ref else []
    if len(refs) > 1:
        raise _PatchError(2, f"--ref {job.ref!r} matches {len(refs)} files in {job.folder}")
    argv = ["match", *map(str, files), "--out", job.out, "--table", str(table)]
    return argv + (["--ref", str(refs[0])] if refs else []) + list(job.options)


def _call(main: Callable[[list[str]], int], argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` with its stdout dropped and its stderr returned as one line."""
    err = _io.StringIO()
    with contextlib.redirect_stdout(_io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, _message(err.getvalue(), failed=code != 0)


def _message(stderr: str, *, failed: bool) -> str:
    """The ``jaxmatch: error/warning`` lines of ``stderr`` joined by "; ".

    Without such a line, the last line of a failed command ("" for a successful one).
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    kept = [
        line.removeprefix("jaxmatch: ")
        for line in lines
        if line.startswith(("jaxmatch: error", "jaxmatch: warning"))
    ]
    if kept or not failed:
        return "; ".join(kept)
    return lines[-1] if lines else ""


def _read_rows(table: Path) -> tuple[dict[str, Any], ...]:
    try:
        rows = json.loads(table.read_text())
    except (OSError, ValueError):
        return ()
    return tuple(rows) if isinstance(rows, list) else ()


# -- the client side ----------------------------------------------------------------------
def _distributed():
    """The ``distributed`` module, or an ImportError that names the extra to install."""
    try:
        import distributed
    except ImportError as err:
        raise ImportError(
            f"jaxmatch survey needs Dask's distributed scheduler ({err}): {INSTALL_HINT}"
        ) from None
    return distributed


def plan_survey(
    patch_dirs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    options: Sequence[str] = (),
    ref: str | None = None,
    compilation_cache: str | os.PathLike | None = None,
) -> list[PatchJob]:
    """One `PatchJob` per patch folder; refuses missing folders and repeated names.

    Paths are made absolute (workers may run elsewhere on a shared file system).
    """
    out = Path(os.path.abspath(out_dir))
    cache = None if compilation_cache is None else os.path.abspath(compilation_cache)
    jobs, seen = [], {}
    for d in patch_dirs:
        folder = Path(os.path.abspath(d))
        if not folder.is_dir():
            raise SurveyUsageError(f"patch folder {d} does not exist or is not a folder")
        if folder.name in seen:
            raise SurveyUsageError(
                f"patch folders {seen[folder.name]} and {d} have the same name "
                f"{folder.name!r}: their outputs would both go to {out / folder.name}"
            )
        if folder == out or out in folder.parents:
            raise SurveyUsageError(f"patch folder {d} is inside the output folder {out_dir}")
        seen[folder.name] = d
        jobs.append(
            PatchJob(folder.name, str(folder), str(out / folder.name), tuple(options), ref, cache)
        )
    if not jobs:
        raise SurveyUsageError("no patch folder given")
    return jobs


def check_options(options: Sequence[str]) -> None:
    """Refuse match options that ``jaxmatch match`` refuses, before any work is sent.

    Runs the match command on a file that does not exist, in a temporary folder: a
    bad option or config stops it with exit status 2 (its message is raised as
    `SurveyUsageError`) before it looks for the file.
    """
    from . import cli

    with tempfile.TemporaryDirectory() as tmp:
        code, message = _call(
            cli.main, ["match", str(Path(tmp, "x.fits")), "--out", str(Path(tmp, "o")), *options]
        )
    if code == 2:
        raise SurveyUsageError(message.removeprefix("error: "))


def run_survey(
    patch_dirs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    client=None,
    workers: int = 2,
    config=None,
    options: Sequence[str] = (),
    ref: str | None = None,
    skip_existing: bool = False,
    table: str | os.PathLike | None = None,
    compilation_cache: str | os.PathLike | None = None,
    dashboard_address: str | None = "127.0.0.1:8787",
    progress: bool | None = None,
    on_result: Callable[[PatchResult], None] | None = None,
):
    """Match every patch on a Dask cluster; return the survey table.

    Args:
        patch_dirs: the patch folders (each a folder of FITS exposures of one patch);
            their names must differ, they name the output sub-folders.
        out_dir: the survey's output folder; patch ``P`` goes to ``out_dir/P/``,
            exactly as ``jaxmatch match P/*.fits --out out_dir/P --table
            out_dir/P/table.json`` writes it.
        client: a ``distributed.Client`` of a running cluster; None starts a
            ``LocalCluster`` of ``workers`` processes with one thread each on
            127.0.0.1, closed at the end.
        config: a `MatchBackgroundsConfig` for every patch (saved as
            ``out_dir/survey.config.toml`` and passed as ``--config``), or None.
        options: more ``jaxmatch match`` options, e.g. ``["--set", "binSize=64",
            "--gain", "2.0"]`` (after ``config``, so they override it).
        ref: a file-name pattern (``fnmatch``, e.g. ``"visit0042*"``) naming the
            reference in each patch; a patch where none matches lets the LSST cost
            choose, one where several match fails.
        skip_existing: pass ``--skip-existing`` (resume an interrupted survey).
        table: also write the survey table to this ``.csv`` or ``.json`` file.
        compilation_cache: a folder for JAX's persistent compilation cache, shared
            by the workers (a shared file system on a cluster), or None.
        dashboard_address: where the embedded cluster serves Dask's dashboard (needs
            bokeh); None for none.
        progress: a progress bar over the patches on stderr (default: when stderr is
            a terminal).
        on_result: called with each `PatchResult` as it arrives (in the client).

    Returns:
        An astropy `Table`, one row per exposure (one row with an empty exposure for
        a patch that failed before its table was written), in the order of
        ``patch_dirs``: ``patch``, the match table's columns (``exposure``,
        ``reference``, ``fitRMS``, ``matchedMSE``, ``diffImVar``, ...; masked where
        undefined), ``patch_status`` (``"ok"`` / ``"failed"``), ``patch_exit`` (the
        match command's exit status, -1 when the task itself failed),
        ``patch_message``, ``patch_seconds``, ``patch_compiles``, ``worker``.

    Raises:
        SurveyUsageError: a missing or repeated patch folder, or options
            ``jaxmatch match`` refuses (nothing is sent to the cluster).
        ImportError: Dask's ``distributed`` is not installed.
    """
    distributed = _distributed()
    if table is not None and Path(table).suffix.lower() not in (".csv", ".json"):
        raise SurveyUsageError(f"table {table}: use a .csv or .json file name")
    jobs = plan_survey(patch_dirs, out_dir, ref=ref, compilation_cache=compilation_cache)
    options = list(options) + (["--skip-existing"] if skip_existing else [])
    check_options(options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config is not None:
        from .io import atomic_write

        saved = out / "survey.config.toml"
        atomic_write(saved, lambda f: f.write(config.toToml().encode()))
        options = ["--config", os.path.abspath(saved), *options]
    jobs = [job._replace(options=tuple(options)) for job in jobs]

    with contextlib.ExitStack() as stack:
        if client is None:
            if workers < 1:
                raise SurveyUsageError(f"workers must be at least 1, got {workers}")
            cluster = stack.enter_context(
                distributed.LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    # Dask's HTTP server starts even without a dashboard: keep it local.
                    dashboard_address=dashboard_address or "127.0.0.1:0",
                    worker_dashboard_address="127.0.0.1:0",
                    scheduler_kwargs={"dashboard": bool(dashboard_address) and _has_bokeh()},
                )
            )
            client = stack.enter_context(distributed.Client(cluster))
        _announce(client, dashboard=dashboard_address is not None)
        results = _gather(distributed, client, jobs, progress, on_result)
    survey = survey_table(results)
    if table is not None:
        write_table(survey, table)
    return survey


def _has_bokeh() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def _announce(client, *, dashboard: bool = True) -> None:
    """Print the workers and the dashboard address; warn about multi-thread workers."""
    info = client.scheduler_info()
    nthreads = client.nthreads()
    link = None
    with contextlib.suppress(Exception):  # Dask serves its dashboard only with bokeh
        if (
            dashboard
            and client.run_on_scheduler(_has_bokeh)
            and "dashboard" in info.get("services", {})
        ):
            link = client.dashboard_link
    where = f", dashboard {link}" if link else ""
    print(
        f"jaxmatch: survey on {info.get('address', 'a Dask scheduler')}: "
        f"{len(nthreads)} worker(s){where}",
        file=sys.stderr,
    )
    if any(n > 1 for n in nthreads.values()):
        print(
            "jaxmatch: warning: some workers have several threads; each process matches "
            "one patch at a time, so start workers with --nthreads 1 (one process per "
            "core or device)",
            file=sys.stderr,
        )


def _gather(distributed, client, jobs, progress, on_result) -> list[PatchResult]:
    """Submit one task per patch and collect the results, in the order of ``jobs``."""
    futures = [
        client.submit(match_patch, job, key=f"jaxmatch-patch-{i}-{job.name}", pure=False, retries=1)
        for i, job in enumerate(jobs)
    ]
    by_key = {f.key: (i, job) for i, (f, job) in enumerate(zip(futures, jobs))}
    results: list[PatchResult | None] = [None] * len(jobs)
    show = sys.stderr.isatty() if progress is None else progress
    bar = _bar(len(jobs)) if show else None
    try:
        for future in distributed.as_completed(futures):
            i, job = by_key[future.key]
            results[i] = _result(future, job)
            if on_result is not None:
                on_result(results[i])
            future.release()
            if bar is not None:
                bar.update(1)
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        if bar is not None:
            bar.close()
    return results


def _bar(total: int):
    """A tqdm progress bar over the patches on stderr."""
    from tqdm import tqdm

    return tqdm(total=total, desc="patches", unit="patch", file=sys.stderr, dynamic_ncols=True)


def _result(future, job: PatchJob) -> PatchResult:
    """The future's `PatchResult`, or a failed one saying why the task failed."""
    if future.status == "finished":
        return future.result()
    err = future.exception()
    name = type(err).__name__
    if name == "KilledWorker":  # Dask gave up after allowed-failures + 1 worker deaths
        tries = getattr(err, "allowed_failures", -2) + 1
        last = getattr(getattr(err, "last_worker", None), "address", "?")
        message = (
            f"{tries if tries > 0 else 'several'} workers died while matching this patch "
            f"(out of memory?); the last one was {last}"
        )
    else:
        message = f"{name}: {err}"
    return PatchResult(job.name, -1, " ".join(message.split()), (), 0, math.nan, 0, "")


def survey_table(results: Sequence[PatchResult]):
    """The survey table (astropy `Table`) of patch results: see `run_survey`."""
    from astropy.table import MaskedColumn, Table

    match_keys: list[str] = []
    for r in results:
        for row in r.rows:
            match_keys += [k for k in row if k not in match_keys]
    records = []
    for r in results:
        patch = dict(
            patch_status="ok" if r.exit_code == 0 else "failed",
            patch_exit=r.exit_code,
            patch_message=r.message,
            patch_seconds=r.seconds,
            patch_compiles=r.compiles,
            worker=r.worker,
        )
        for row in r.rows or ({},):
            records.append({"patch": r.name, **{k: row.get(k) for k in match_keys}, **patch})
    keys = ["patch", *match_keys, *PATCH_COLUMNS]
    survey = Table()
    for key in keys:
        values = [rec[key] for rec in records]
        missing = [v is None for v in values]
        numbers = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None
        )
        if numbers and any(isinstance(v, float) for v in values):
            data = [math.nan if v is None else float(v) for v in values]
        elif numbers and not all(missing):
            data = [0 if v is None else int(v) for v in values]
        else:
            data = ["" if v is None else str(v) for v in values]
        survey[key] = MaskedColumn(data, mask=missing) if any(missing) else data
    return survey


def write_table(survey, path: str | os.PathLike) -> None:
    """Write the survey table atomically as CSV (undefined: empty) or JSON (null)."""
    import numpy as np

    from .io import atomic_write

    columns = [
        [None if m else _plain(v) for v, m in zip(np.ma.getdata(c), np.ma.getmaskarray(c))]
        for c in survey.itercols()
    ]
    rows = [dict(zip(survey.colnames, values)) for values in zip(*columns)]
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(rows, indent=2)
    else:
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=survey.colnames)
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    atomic_write(path, lambda f: f.write(text.encode()))


def _plain(value):
    """A NumPy scalar as a Python one; NaN as None (the match table's convention)."""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# -- the command line ---------------------------------------------------------------------
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
    from .cli import UsageError

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
    failed = sorted({p for p, s in zip(survey["patch"], survey["patch_status"]) if s != "ok"})
    patches = len(set(survey["patch"]))
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
