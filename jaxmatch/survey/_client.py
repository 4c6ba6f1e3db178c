"""The client side of a survey: plan the patches, run them on Dask, build the table."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import cast

from ._records import INSTALL_HINT, PatchJob, PatchResult, SurveyUsageError
from ._table import survey_table, write_table
from ._worker import _call, match_patch


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
    from .. import cli

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
        from ..io import atomic_write

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
        # bokeh is optional (the dask dashboard): not installed where the checker runs
        import bokeh  # noqa: F401  # pyright: ignore[reportMissingImports]
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
    return cast("list[PatchResult]", results)  # every job has its result by now


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
