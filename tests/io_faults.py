"""Simulated write failures: a folder that refuses new files, a disk that fills up.

Tests may run as root, for whom ``chmod`` cannot make a folder unwritable, so the
failures are injected with ``monkeypatch`` at the operating-system calls.
"""

import errno
import io
import os
from pathlib import Path

from astropy.io import fits


def refuse_writes_in(monkeypatch, folder) -> None:
    """Opening a file for writing in ``folder`` fails with EACCES, as in a read-only folder."""
    folder = Path(folder).resolve()
    real_open = os.open

    def guarded_open(path, flags, *args, **kwargs):
        target = Path(os.fsdecode(path)).resolve()
        # tempfile opens the folder itself (O_TMPFILE) or a new file in it
        if flags & (os.O_WRONLY | os.O_RDWR) and folder in (target, target.parent):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)


def fill_disk(monkeypatch, *, at: str = "write", call: int = 1) -> list[int]:
    """The disk fills up (ENOSPC) during the ``call``-th FITS write (1-based).

    ``at="write"``: `HDUList.writeto` writes the first half of its bytes, then fails;
    ``at="fsync"``: all bytes are written and `os.fsync` fails (as on network file
    systems that report a full disk late). Returns a list that receives the size of
    the file [bytes] at the moment of the failure.
    """
    sizes: list[int] = []
    calls = 0
    real_writeto, real_fsync = fits.HDUList.writeto, os.fsync

    def writeto(self, fileobj, *args, **kwargs):
        nonlocal calls
        calls += 1
        if at != "write" or calls != call:
            return real_writeto(self, fileobj, *args, **kwargs)
        buffer = io.BytesIO()
        real_writeto(self, buffer)
        fileobj.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        fileobj.flush()
        sizes.append(os.fstat(fileobj.fileno()).st_size)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fsync(fd):
        if at == "fsync" and calls == call:
            sizes.append(os.fstat(fd).st_size)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(fits.HDUList, "writeto", writeto)
    monkeypatch.setattr(os, "fsync", fsync)
    return sizes
