"""Atomic file writes and the removal of what a killed write left behind.

`atomic_write` writes a file through a hidden temporary file ``.NAME.<random>.tmp``
in the same folder, renamed over the target when complete; `remove_stale_temps`
removes such temporary files left by a process killed mid-write. Used by
`jaxmatch.io` (exposures), `jaxmatch._persist` (model files) and the command line
(tables), so none of them imports another for it.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "remove_stale_temps"]


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(file_object)`` on a temporary file, then rename it to ``path``.

    The temporary file is ``.NAME.<random>.tmp`` in the folder of ``path``. On any
    failure it is removed and ``path`` keeps its old content (or stays absent); an
    `OSError` (folder missing or not writable, disk full, ...) is raised again as one
    of the same kind (same ``errno``) whose message names ``path``.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _naming(err, path) from err
    try:
        with os.fdopen(fd, "wb") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise


# The temporary files of `atomic_write`: "." + the target's name + "." + tempfile's
# 8 random letters, digits and underscores + ".tmp".
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")


def remove_stale_temps(paths) -> list[Path]:
    """Remove the temporary files that `atomic_write` left for ``paths`` when killed.

    A process killed mid-write (SIGKILL, power loss) leaves ``.NAME.<random>.tmp``
    next to the target ``NAME``. Only such files, for the names in ``paths``, are
    removed; a file being written right now by another process is one of them, so do
    not call this while another process may write the same targets. Returns the
    removed files.
    """
    targets: dict[Path, set[str]] = {}
    for path in map(Path, paths):
        targets.setdefault(path.parent, set()).add(path.name)
    removed = []
    for folder, names in targets.items():
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                match = _TEMP_NAME.fullmatch(entry.name)
                if match and match["target"] in names and entry.is_file(follow_symlinks=False):
                    removed.append(Path(entry.path))
    for stale in removed:
        stale.unlink()
    return sorted(removed)


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` as an OSError of the same kind (same ``errno``) whose message names ``path``."""
    if err.errno is None:
        return OSError(f"cannot write {path}: {err}")
    return OSError(err.errno, f"cannot write {path}: {err.strerror or os.strerror(err.errno)}")
