"""FITS and astropy input/output of exposures and background models.

Exposures
---------
``readExposure(path)`` gives an `Exposure`; ``writeExposure(exposure, path)``
writes one. Files are written in the layout LSST uses: an empty primary HDU, then
``IMAGE``, ``MASK`` and ``VARIANCE`` image extensions, with the mask-plane
dictionary stored in the MASK header as ``MP_<NAME> = bit`` cards. A plain
single-image FITS file is read too: its mask is all zero except ``NO_DATA`` on
non-finite pixels, and its variance is ``max(image, 0) / gain + read_noise²``
[ADU²] when ``gain`` [e⁻/ADU] or ``read_noise`` [ADU] is given, else estimated
from the image (`jaxmatch.estimate_variance`).

An `Exposure` holds pixels only. To keep the primary header and the world
coordinate system through read → match → write, read with
`readExposureWithMetadata`, which returns ``(exposure, header, wcs)`` (a named
tuple), and hand the two back to `writeExposure`::

    exposure, header, wcs = readExposureWithMetadata("visit42.fits")
    matched = applyModel(model, exposure)
    writeExposure(matched, "visit42_matched.fits", header=header, wcs=wcs)

``header`` is the primary header (an `astropy.io.fits.Header`, structural
keywords removed; for a single-image file, the header of that image) and ``wcs``
an `astropy.wcs.WCS` read from the IMAGE extension's header (None when it has no
WCS keywords). `writeExposure` puts ``header`` in the primary HDU and ``wcs`` in
the headers of all three extensions, as LSST does.

astropy's `~astropy.nddata.CCDData` / `~astropy.nddata.NDData` come in with
`fromNDData` (a boolean mask becomes the ``BAD`` plane, an uncertainty the
variance plane); ``ccd.meta`` and ``ccd.wcs`` can be passed to `writeExposure`.

Background models
-----------------
`writeModel` / `readModel` save and load a fitted `BackgroundModel` (its
coefficients and every `Basis` field, plus the config as a dict if given) as a
small FITS file; `applyModel` adds a model to an exposure. See
``jaxmatch/_persist.py``.

Writing never leaves a half-written file: the data go to a hidden temporary file
``.NAME.<random>.tmp`` in the same directory, which is then renamed over the target
(`atomic_write`). When writing fails (a folder that is missing or not writable, a
full disk) the target keeps its old content, the temporary file is removed and the
`OSError` names the target. Only a process killed mid-write leaves its temporary
file behind; `remove_stale_temps` removes such files.
"""
# pyright: reportAttributeAccessIssue=false, reportOptionalMemberAccess=false
# (astropy's stubs type hdul[name] as HDUList, not an HDU.)

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from astropy.io import fits

from ._exposure import DEFAULT_MASK_PLANES, Exposure
from ._persist import applyModel, readModel, readModelConfig, writeModel

__all__ = [
    "ExposureWithMetadata",
    "applyModel",
    "atomic_write",
    "fromNDData",
    "readExposure",
    "readExposureWithMetadata",
    "readModel",
    "readModelConfig",
    "remove_stale_temps",
    "writeExposure",
    "writeModel",
]

_PLANE_PREFIX = "MP_"
# Keywords that describe an HDU's own structure; they are never carried over.
_STRUCTURAL = re.compile(
    r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|XTENSION|PCOUNT|GCOUNT|EXTNAME|EXTVER|"
    r"BSCALE|BZERO|BLANK|CHECKSUM|DATASUM|ZIMAGE|ZBITPIX|ZNAXIS\d*|ZTILE\d*|ZCMPTYPE)$"
)
_WCS_KEY = re.compile(r"^(WCSAXES|CTYPE\d|CRPIX\d|CRVAL\d|CDELT\d|CD\d_\d|PC\d_\d)$")


class ExposureWithMetadata(NamedTuple):
    """What `readExposureWithMetadata` returns; unpacks as ``exposure, header, wcs``."""

    exposure: Exposure
    header: fits.Header
    wcs: Any  # astropy.wcs.WCS | None


def readExposure(
    path: str | os.PathLike, *, gain: float | None = None, read_noise: float | None = None
) -> Exposure:
    """Read an exposure from a FITS file (multi-extension or single image).

    ``gain`` [e⁻/ADU] and ``read_noise`` [ADU] give the variance of a file that has
    no variance plane (see the module docstring); they are ignored otherwise.

    Raises `FileNotFoundError` for a missing file and `ValueError` naming the file
    when it is not a readable FITS image.
    """
    return readExposureWithMetadata(path, gain=gain, read_noise=read_noise).exposure


def readExposureWithMetadata(
    path: str | os.PathLike, *, gain: float | None = None, read_noise: float | None = None
) -> ExposureWithMetadata:
    """Read an exposure with its primary header and WCS: ``(exposure, header, wcs)``.

    ``header`` is an `astropy.io.fits.Header` (structural keywords such as BITPIX
    and NAXIS removed), ``wcs`` an `astropy.wcs.WCS` or None. Errors as
    `readExposure`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such FITS file: {path}")
    _check_noise(gain, read_noise)
    try:
        with warnings.catch_warnings():
            # astropy only warns about a truncated file (it pads short data and drops
            # an HDU whose header is cut): refuse such a file instead.
            warnings.filterwarnings(
                "error", message="(File may have been truncated|Error validating header)"
            )
            with fits.open(path, memmap=False) as hdus:
                names = {h.name.upper(): h for h in hdus}
                header = _clean_header(hdus[0].header)
                if "IMAGE" in names:
                    image = _native(names["IMAGE"].data)
                    image_header = names["IMAGE"].header
                    mask_hdu = names.get("MASK")
                    mask = None if mask_hdu is None else _native(mask_hdu.data).astype(np.int32)
                    planes = DEFAULT_MASK_PLANES if mask_hdu is None else _planes(mask_hdu.header)
                    var_hdu = names.get("VARIANCE")
                    variance = None if var_hdu is None else _native(var_hdu.data)
                else:
                    hdu = next((h for h in hdus if h.data is not None), None)
                    if hdu is None:
                        raise ValueError("no image data")
                    image = _native(hdu.data)
                    image_header = hdu.header
                    if hdu is not hdus[0]:  # keep the image's keywords, as for the primary
                        header.extend(_clean_header(image_header), unique=True)
                    planes = DEFAULT_MASK_PLANES
                    mask = None
                    variance = None
                wcs = _read_wcs(image_header)
    except (OSError, TypeError, ValueError, IndexError, KeyError, UserWarning) as err:
        raise ValueError(f"cannot read {path} as a FITS exposure: {err}") from err
    if image is None or image.ndim != 2:
        raise ValueError(
            f"{path}: the image must be 2-D, got {None if image is None else image.shape}"
        )
    image = image.astype(np.float64) if not np.issubdtype(image.dtype, np.floating) else image
    if mask is None:
        mask = np.where(np.isfinite(image), 0, 1 << planes["NO_DATA"]).astype(np.int32)
    if variance is None and (gain is not None or read_noise is not None):
        variance = _noise_variance(image, gain, read_noise)
    exposure = Exposure(image, mask, variance, mask_planes=planes)
    return ExposureWithMetadata(exposure, header, wcs)


def writeExposure(
    exposure: Exposure,
    path: str | os.PathLike,
    *,
    overwrite: bool = True,
    header: fits.Header | Mapping[str, Any] | None = None,
    wcs=None,
) -> None:
    """Write an exposure as multi-extension FITS, atomically (temporary file + rename).

    Arguments:
        exposure: a single `Exposure` (not a batch).
        path: the target file.
        overwrite: replace an existing file (else `FileExistsError`).
        header: keywords for the primary HDU (a `fits.Header` or a mapping such as
            ``CCDData.meta``); structural keywords (BITPIX, NAXIS, ...) are dropped.
        wcs: an `astropy.wcs.WCS`, written into the IMAGE, MASK and VARIANCE headers.
    """
    path = Path(path)
    if exposure.batch_shape:
        raise ValueError(
            f"writeExposure writes one exposure, got a batch of shape {exposure.image.shape}"
        )
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True)")
    primary = _clean_header(_as_header(header)) if header is not None else fits.Header()
    wcs_header = fits.Header() if wcs is None else _wcs_header(wcs)
    mask_header = wcs_header.copy()
    for name, bit in exposure.mask_planes:
        mask_header.append(fits.Card(_plane_keyword(name), bit))
    hdus = fits.HDUList(
        [
            fits.PrimaryHDU(header=primary),
            fits.ImageHDU(np.asarray(exposure.image), header=wcs_header.copy(), name="IMAGE"),
            fits.ImageHDU(np.asarray(exposure.mask), header=mask_header, name="MASK"),
            fits.ImageHDU(np.asarray(exposure.variance), header=wcs_header.copy(), name="VARIANCE"),
        ]
    )
    atomic_write(path, lambda f: hdus.writeto(f))


def fromNDData(
    nddata,
    *,
    mask_planes: Mapping[str, int] | None = None,
    gain: float | None = None,
    read_noise: float | None = None,
) -> Exposure:
    """An `Exposure` from an astropy `~astropy.nddata.NDData` or `~astropy.nddata.CCDData`.

    Arguments:
        nddata: the 2-D image ``data`` [its ``unit``] with optional ``mask`` and
            ``uncertainty``.
        mask_planes: plane name → bit (None: `DEFAULT_MASK_PLANES`); must hold
            ``BAD`` and ``NO_DATA``.
        gain: [e⁻/ADU], read_noise: [ADU]: used only without an uncertainty.

    The mask: a boolean mask sets the ``BAD`` plane where True; an integer mask is
    taken as bit planes of ``mask_planes``. Non-finite pixels get ``NO_DATA``.
    The variance: from the uncertainty (`StdDevUncertainty` squared,
    `VarianceUncertainty` as is, `InverseVariance` inverted; converted to the
    data's unit squared when both have units); without one,
    ``max(data, 0) / gain + read_noise²`` when either is given, else estimated
    from the image (`jaxmatch.estimate_variance`). Non-finite pixels get an
    infinite variance. Integer data become float64.
    """
    from astropy.nddata import NDData

    if not isinstance(nddata, NDData):
        raise TypeError(f"expected an astropy NDData/CCDData, got {type(nddata).__name__}")
    image = np.asarray(nddata.data)
    if image.ndim != 2:
        raise ValueError(f"the NDData image must be 2-D, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float64)
    planes = dict(DEFAULT_MASK_PLANES if mask_planes is None else mask_planes)
    for needed in ("BAD", "NO_DATA"):
        if needed not in planes:
            raise ValueError(f"mask_planes must contain {needed!r}, got {sorted(planes)}")
    finite = np.isfinite(image)
    mask = np.where(finite, 0, 1 << planes["NO_DATA"]).astype(np.int32)
    if nddata.mask is not None:
        given = np.asarray(nddata.mask)
        if given.shape != image.shape:
            raise ValueError(f"mask shape {given.shape} differs from image shape {image.shape}")
        if given.dtype == bool:
            mask |= np.where(given, 1 << planes["BAD"], 0).astype(np.int32)
        elif np.issubdtype(given.dtype, np.integer):
            mask |= given.astype(np.int32)
        else:
            raise TypeError(f"the NDData mask must be boolean or integer, got {given.dtype}")
    if nddata.uncertainty is not None:
        variance = _uncertainty_variance(nddata.uncertainty, getattr(nddata, "unit", None))
        if variance.shape != image.shape:
            raise ValueError(
                f"uncertainty shape {variance.shape} differs from image shape {image.shape}"
            )
        variance = np.where(finite, variance, np.inf).astype(image.dtype)
    elif gain is not None or read_noise is not None:
        _check_noise(gain, read_noise)
        variance = _noise_variance(image, gain, read_noise)
    else:
        variance = None
    return Exposure(image, mask, variance, mask_planes=planes)


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


# -- helpers ------------------------------------------------------------------------------
def _check_noise(gain, read_noise) -> None:
    if gain is not None and not (np.isfinite(gain) and gain > 0):
        raise ValueError(f"gain must be a finite number > 0 [e-/ADU], got {gain!r}")
    if read_noise is not None and not (np.isfinite(read_noise) and read_noise >= 0):
        raise ValueError(f"read_noise must be a finite number >= 0 [ADU], got {read_noise!r}")


def _noise_variance(image: np.ndarray, gain, read_noise) -> np.ndarray:
    """``max(image, 0) / gain + read_noise²`` [ADU²]; infinite on non-finite pixels."""
    with np.errstate(invalid="ignore"):
        shot = 0.0 if gain is None else np.maximum(image, 0) / gain
    var = shot + (0.0 if read_noise is None else float(read_noise) ** 2)
    return np.where(np.isfinite(image), var, np.inf).astype(image.dtype)


def _uncertainty_variance(uncertainty, data_unit) -> np.ndarray:
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    array = np.asarray(uncertainty.array, dtype=np.float64)
    unit = uncertainty.unit
    if isinstance(uncertainty, StdDevUncertainty):
        variance, unit = array**2, None if unit is None else unit**2
    elif isinstance(uncertainty, VarianceUncertainty):
        variance = array
    elif isinstance(uncertainty, InverseVariance):
        with np.errstate(divide="ignore"):
            variance = 1.0 / array  # an inverse variance of 0 is an infinite variance
        unit = None if unit is None else unit**-1
    else:
        raise TypeError(
            f"unsupported uncertainty {type(uncertainty).__name__}: use StdDevUncertainty, "
            "VarianceUncertainty or InverseVariance"
        )
    if unit is not None and data_unit is not None and unit != data_unit**2:
        variance = (variance * unit).to_value(data_unit**2)  # UnitConversionError if unlike
    return variance


def _as_header(header) -> fits.Header:
    if isinstance(header, fits.Header):
        return header.copy()
    if isinstance(header, Mapping):
        out = fits.Header()
        for key, value in header.items():
            out[key] = value
        return out
    raise TypeError(f"header must be an astropy.io.fits.Header or a mapping, got {header!r}")


def _clean_header(header: fits.Header) -> fits.Header:
    out = header.copy()
    for key in list(out.keys()):
        if _STRUCTURAL.match(key):
            del out[key]
    return out


def _wcs_header(wcs) -> fits.Header:
    to_header = getattr(wcs, "to_header", None)
    if to_header is None:
        raise TypeError(f"wcs must be an astropy.wcs.WCS, got {type(wcs).__name__}")
    from astropy.wcs import WCSHDO_P17, WCSHDO_all

    # 17 significant digits (wcslib writes 14 by default): the WCS survives exactly.
    header = to_header(relax=WCSHDO_all | WCSHDO_P17)
    for card in header.cards:  # a 17-digit value leaves no room for some comments
        if len(str(card)) > 80:
            header.comments[card.keyword] = ""
    return header


def _read_wcs(header: fits.Header):
    if not any(_WCS_KEY.match(k) for k in header.keys()):
        return None
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # astropy's notes on fixes it made
        return WCS(header)


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
