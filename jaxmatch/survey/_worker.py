"""The worker side of a survey: one patch, matched by the ``jaxmatch match`` command."""

from __future__ import annotations

import contextlib
import fnmatch
import io as _io
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._records import FITS_SUFFIXES, PATCH_TABLE, PatchJob, PatchResult


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


def _count_compile(event: str, duration_secs: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


def _prepare_process(cache: str | None) -> None:
    """Count compilations; point JAX's persistent cache at ``cache`` (before compiling)."""
    import jax

    if not _LISTENING[0]:
        jax.monitoring.register_event_duration_secs_listener(_count_compile)
        _LISTENING[0] = True
    # jax's Config declares its options at run time: the checker does not see them
    if cache is not None and jax.config.jax_compilation_cache_dir != cache:  # pyright: ignore[reportAttributeAccessIssue]
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
    from .. import cli

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
