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

Folders of files
----------------
`jaxmatch.match_files` does what ``jaxmatch match`` does (see
``jaxmatch/_filematch.py``): reads FITS files of any layout, matches them in chunks
and writes each output in its input's layout with its header cards; it returns a
`jaxmatch.MatchReport` (one row per image). It lives above this module (it runs the
task, which reads files through this module).

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

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from astropy.io import fits

from ._atomic import atomic_write, remove_stale_temps
from ._exposure import DEFAULT_MASK_PLANES, Exposure
from ._fitsfile import native as _native, noise_variance as _noise_variance
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
    path: str | os.PathLike,
    *,
    gain: float | None = None,
    read_noise: float | None = None,
    hdu: str | int | None = None,
) -> ExposureWithMetadata:
    """Read an exposure with its primary header and WCS: ``(exposure, header, wcs)``.

    ``header`` is an `astropy.io.fits.Header` (structural keywords such as BITPIX
    and NAXIS removed), ``wcs`` an `astropy.wcs.WCS` or None (also when the WCS
    cards cannot be used, e.g. ``CDELT = 0``: a warning names the file). Tables
    and empty HDUs are skipped wherever they are. A file with several images
    (``CCD1``, ``CCD2``) needs ``hdu`` (the extension name or HDU number):
    otherwise `ValueError` naming them. Errors as `readExposure`.
    """
    from ._fitsfile import image_slots, open_fits, read_slot

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such FITS file: {path}")
    check_noise(gain, read_noise)
    with open_fits(path) as hdus:
        slots = image_slots(hdus)
        if not slots:
            raise ValueError(f"cannot read {path} as a FITS exposure: it holds no 2-D image")
        if hdu is None:
            if len(slots) > 1:
                keys = ", ".join(s.key for s in slots)
                raise ValueError(
                    f"{path} holds {len(slots)} images ({keys}): pass hdu= one of them "
                    "(jaxmatch match matches each)"
                )
            slot = slots[0]
        else:
            wanted = [s for s in slots if s.index == hdu or s.key == str(hdu).upper()]
            if not wanted:
                raise ValueError(f"{path} has no image hdu={hdu!r}; its images: {slots}")
            slot = wanted[0]
        exposure = read_slot(hdus, slot, path, gain=gain, read_noise=read_noise)
        header = _clean_header(hdus[0].header)
        image_header = hdus[slot.index].header
        if slot.index != 0 and not slot.lsst:  # the image's keywords, as for the primary
            header.extend(_clean_header(image_header), unique=True)
        wcs = _read_wcs(image_header, path)
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
    image = _native(np.asarray(nddata.data))  # CCDData.read gives big-endian arrays
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
        given = _native(np.asarray(nddata.mask))
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
        check_noise(gain, read_noise)
        variance = _noise_variance(image, gain, read_noise)
    else:
        variance = None
    return Exposure(image, mask, variance, mask_planes=planes)


# -- helpers ------------------------------------------------------------------------------
def check_noise(gain, read_noise) -> None:
    """`ValueError` unless ``gain`` [e-/ADU] is None or finite > 0 and ``read_noise``
    [ADU] None or finite >= 0."""
    if gain is not None and not (np.isfinite(gain) and gain > 0):
        raise ValueError(f"gain must be a finite number > 0 [e-/ADU], got {gain!r}")
    if read_noise is not None and not (np.isfinite(read_noise) and read_noise >= 0):
        raise ValueError(f"read_noise must be a finite number >= 0 [ADU], got {read_noise!r}")


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
    from astropy.wcs.wcs import WCSHDO_SIP

    # 17 significant digits (wcslib writes 14 by default): the WCS survives exactly;
    # WCSHDO_SIP keeps a SIP distortion (and the -SIP of CTYPE).
    header = to_header(relax=WCSHDO_all | WCSHDO_P17 | WCSHDO_SIP)
    for card in header.cards:  # a 17-digit value leaves no room for some comments
        if len(str(card)) > 80:
            header.comments[card.keyword] = ""
    return header


def _read_wcs(header: fits.Header, path=None):
    if not any(_WCS_KEY.match(k) for k in header.keys()):
        return None
    from astropy.wcs import WCS, FITSFixedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)  # astropy's notes on fixes it made
            wcs = WCS(header)
            wcs.pixel_to_world_values(0.0, 0.0)  # a singular matrix (CDELT = 0) fails here
            return wcs
    except Exception as err:  # noqa: BLE001 - matching needs no WCS: warn, go on without
        warnings.warn(f"{path}: its WCS cannot be used ({err}); read without a WCS", stacklevel=3)
        return None


def _plane_keyword(name: str) -> str:
    # A standard FITS keyword is <= 8 characters of A-Z 0-9 _ - (astropy upper-cases
    # it, so "MP_abc" would come back as plane "ABC"); any other name goes in a
    # HIERARCH card, which keeps its case (LSST does the same for long names).
    key = _PLANE_PREFIX + name
    if len(key) <= 8 and re.fullmatch(r"[A-Z0-9_-]+", key):
        return key
    return "HIERARCH " + key
