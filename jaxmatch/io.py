"""FITS input/output of exposures (astropy), in the layout LSST writes exposures.

A multi-extension FITS file: an empty primary HDU (its header is kept), then
``IMAGE``, ``MASK`` and ``VARIANCE`` image extensions. The mask plane dictionary
is stored in the MASK header as ``MP_<NAME> = bit`` cards, as LSST does. A plain
single-image FITS file is read too: its mask is all zero except ``NO_DATA`` on
non-finite pixels, and its variance is estimated from the image
(`jaxmatch.estimate_variance`).

Writing never leaves a half-written file: the data go to a temporary file in the
same directory, which is then renamed over the target.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from ._exposure import DEFAULT_MASK_PLANES, Exposure

_PLANE_PREFIX = "MP_"


def readExposure(path: str | os.PathLike) -> Exposure:
    """Read an exposure from a FITS file (multi-extension or single image).

    Raises `FileNotFoundError` for a missing file and `ValueError` naming the file
    when it is not a readable FITS image.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such FITS file: {path}")
    try:
        with warnings.catch_warnings():
            # astropy only warns about a truncated file (it pads short data and drops
            # an HDU whose header is cut): refuse such a file instead.
            warnings.filterwarnings(
                "error", message="(File may have been truncated|Error validating header)"
            )
            with fits.open(path, memmap=False) as hdus:
                names = {h.name.upper(): h for h in hdus}
                if "IMAGE" in names:
                    image = _native(names["IMAGE"].data)
                    mask_hdu = names.get("MASK")
                    mask = None if mask_hdu is None else _native(mask_hdu.data).astype(np.int32)
                    planes = DEFAULT_MASK_PLANES if mask_hdu is None else _planes(mask_hdu.header)
                    var_hdu = names.get("VARIANCE")
                    variance = None if var_hdu is None else _native(var_hdu.data)
                else:
                    data = next((h.data for h in hdus if h.data is not None), None)
                    if data is None:
                        raise ValueError("no image data")
                    image = _native(data)
                    planes = DEFAULT_MASK_PLANES
                    mask = np.where(np.isfinite(image), 0, 1 << planes["NO_DATA"]).astype(np.int32)
                    variance = None
    except (OSError, TypeError, ValueError, IndexError, KeyError, UserWarning) as err:
        raise ValueError(f"cannot read {path} as a FITS exposure: {err}") from err
    if image is None or image.ndim != 2:
        raise ValueError(
            f"{path}: the image must be 2-D, got {None if image is None else image.shape}"
        )
    image = image.astype(np.float64) if not np.issubdtype(image.dtype, np.floating) else image
    return Exposure(image, mask, variance, mask_planes=planes)


def writeExposure(exposure: Exposure, path: str | os.PathLike, *, overwrite: bool = True) -> None:
    """Write an exposure as multi-extension FITS, atomically (temporary file + rename)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True)")
    mask_header = fits.Header()
    for name, bit in exposure.mask_planes:
        mask_header.append(fits.Card(_plane_keyword(name), bit))
    hdus = fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(np.asarray(exposure.image), name="IMAGE"),
            fits.ImageHDU(np.asarray(exposure.mask), header=mask_header, name="MASK"),
            fits.ImageHDU(np.asarray(exposure.variance), name="VARIANCE"),
        ]
    )
    atomic_write(path, lambda f: hdus.writeto(f))


def atomic_write(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _plane_keyword(name: str) -> str:
    # A standard FITS keyword is <= 8 characters of A-Z 0-9 _ - (astropy upper-cases
    # it, so "MP_abc" would come back as plane "ABC"); any other name goes in a
    # HIERARCH card, which keeps its case (LSST does the same for long names).
    key = _PLANE_PREFIX + name
    if len(key) <= 8 and re.fullmatch(r"[A-Z0-9_-]+", key):
        return key
    return "HIERARCH " + key


def _planes(header) -> dict[str, int]:
    planes = {
        k[len(_PLANE_PREFIX) :]: int(v) for k, v in header.items() if k.startswith(_PLANE_PREFIX)
    }
    return planes or dict(DEFAULT_MASK_PLANES)


def _native(data):
    """The array in native byte order (FITS is big-endian)."""
    if data is None:
        return None
    data = np.asarray(data)
    return (
        data.astype(data.dtype.newbyteorder("="))
        if data.dtype.byteorder not in ("=", "|")
        else data
    )
