"""The records a survey passes around: a patch's job, its result, the table's columns."""

from __future__ import annotations

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
