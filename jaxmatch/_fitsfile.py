"""FITS files as they come: find the images in a file, read them, write a file like it.

One input file holds one or more *images* (`ImageSlot`):

- the LSST layout (``IMAGE`` with ``MASK`` and/or ``VARIANCE`` extensions): one
  image, with its mask planes and variance;
- otherwise every 2-D image HDU (primary, ``IMAGE`` or tile-compressed extensions):
  a plain file has one (in the primary HDU), a multi-extension file several
  (``CCD1``, ``CCD2``, ...). Tables and empty HDUs are skipped, wherever they are.

`write_like` writes an output with the layout of its input: every HDU and every
header card of the input (SIP/TPV distortion, alternate WCS, BUNIT, GAIN, MJD-OBS,
LTV, ...) copied, only the pixel data of the images replaced; a tile-compressed
image stays tile-compressed with the same algorithm, tiles and quantisation, a
gzip/bzip2 file stays one. Cards astropy reads but will not write (lowercase
keywords, ``NaN`` values, unquoted dates) are repaired on the way (astropy's
``fix``) and the repairs are returned so the caller can say so.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, overload

import numpy as np
from astropy.io import fits

from ._atomic import atomic_write
from ._exposure import DEFAULT_MASK_PLANES, Exposure

_PLANE_PREFIX = "MP_"
# Cards that describe how the stored data are encoded: never carried to new data.
_ENCODING = ("BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM")


class ImageSlot(NamedTuple):
    """One image of a file: HDU ``index`` and its ``key`` (EXTNAME, ``PRIMARY``,
    ``HDU<i>`` when unnamed, ``IMAGE`` for the LSST layout)."""

    index: int
    key: str
    lsst: bool


@contextlib.contextmanager
def open_fits(path: Path, data: bytes | None = None) -> Iterator[fits.HDUList]:
    """``fits.open`` that refuses a truncated or damaged file with a `ValueError`
    naming it (astropy only warns about those).

    ``data``: the file's bytes, already read (`read_bytes`): opened from memory
    (gzip or bzip2 content decompressed), ``path`` only names it; None: read
    ``path``.
    """
    path = Path(path)
    if data is None:
        _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "error", message="(File may have been truncated|Error validating header)"
            )
            source = path if data is None else io.BytesIO(_decompressed(data))
            with fits.open(source, memmap=False) as hdus:
                yield hdus
    except (OSError, TypeError, ValueError, IndexError, KeyError, UserWarning) as err:
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise
        raise ValueError(f"cannot read {path} as a FITS exposure: {_one_line(err)}") from err


def image_slots(hdus: fits.HDUList) -> list[ImageSlot]:
    """The images of an open file (see the module docstring), in file order."""
    # astropy's annotations type the items of an HDUList as HDUList
    names = [h.name.upper() for h in hdus]  # pyright: ignore[reportAttributeAccessIssue]
    if "IMAGE" in names and ("MASK" in names or "VARIANCE" in names):
        return [ImageSlot(names.index("IMAGE"), "IMAGE", True)]
    slots, seen = [], set()
    for i, hdu in enumerate(hdus):
        if not _is_image(hdu) or hdu.header.get("NAXIS", 0) < 2:
            continue
        key = hdu.name.upper() or ("PRIMARY" if i == 0 else f"HDU{i}")
        if key in seen or (key == "PRIMARY" and i):
            key = f"HDU{i}"
        seen.add(key)
        slots.append(ImageSlot(i, key, False))
    return slots


def scan_slots(path: Path) -> list[ImageSlot]:
    """The images of the file at ``path``, from its headers only."""
    with open_fits(path) as hdus:
        slots = image_slots(hdus)
    if not slots:
        raise ValueError(f"{path} holds no 2-D image")
    return slots


def read_slot(
    hdus: fits.HDUList,
    slot: ImageSlot,
    path: Path,
    *,
    gain: float | None = None,
    read_noise: float | None = None,
) -> Exposure:
    """The `Exposure` of one image of an open file.

    LSST layout: image, mask (planes from the ``MP_<NAME>`` cards) and variance as
    stored. Otherwise: the mask is ``NO_DATA`` on non-finite pixels and the variance
    ``max(image, 0) / gain + read_noise²`` [ADU²] when either is given, else
    estimated (`jaxmatch.estimate_variance`).
    """
    # astropy's annotations type the items of an HDUList as HDUList
    image = native(hdus[slot.index].data)  # pyright: ignore[reportAttributeAccessIssue]
    if image is None or image.ndim != 2:
        shape = None if image is None else image.shape
        raise ValueError(f"{path}[{slot.key}]: the image must be 2-D, got {shape}")
    image = as_float(image)
    mask = variance = None
    planes = dict(DEFAULT_MASK_PLANES)
    if slot.lsst:
        # astropy's annotations type the items of an HDUList as HDUList
        names: dict[str, Any] = {h.name.upper(): h for h in hdus}  # pyright: ignore[reportAttributeAccessIssue]
        if "MASK" in names:
            mask = native(names["MASK"].data).astype(np.int32)
            planes = mask_planes(names["MASK"].header)
        if "VARIANCE" in names:
            variance = native(names["VARIANCE"].data)
    if mask is None:
        mask = np.where(np.isfinite(image), 0, 1 << planes["NO_DATA"]).astype(np.int32)
    if variance is None and (gain is not None or read_noise is not None):
        variance = noise_variance(image, gain, read_noise)
    return Exposure(image, mask, variance, mask_planes=planes)


def write_like(
    source: Path,
    target: Path,
    images: Mapping[int, np.ndarray],
    cards: Mapping[int, Sequence[fits.Card]] = {},
    *,
    images_only: bool = False,
    data: bytes | None = None,
) -> list[str]:
    """Write ``target`` with the layout and header cards of ``source``, atomically.

    Arguments:
        source: the input file.
        target: the output; ``.gz`` / ``.bz2`` names are compressed as a whole.
        images: HDU index → the new pixel data of that HDU.
        cards: HDU index → cards added to (or replacing those in) its header.
        images_only: keep only the primary HDU and the HDUs in ``images`` (for a
            model image: no mask, variance or tables).
        data: ``source``'s bytes when already read (not read again).

    Returns the repairs astropy made to cards it would not write (one string each).
    """
    with open_fits(source, data) as hdus:
        out = []
        for i, hdu in enumerate(hdus):
            if i in images:
                new = _like(hdu, np.asarray(images[i]))
            elif images_only and i:
                continue
            elif images_only and _is_image(hdu):  # the primary, without its pixels
                new = fits.PrimaryHDU(header=_without_encoding(hdu.header))
            else:
                new = hdu.copy()
            for card in cards.get(i, ()):
                if card.keyword in ("HISTORY", "COMMENT"):
                    new.header.append(card, end=True)
                else:
                    new.header[card.keyword] = (card.value, card.comment)
            out.append(new)
        hdulist = fits.HDUList(out)
        repairs = _repair(hdulist)
        atomic_write(target, lambda f: _write(hdulist, f, target))
    return repairs


def read_bytes(path: Path) -> bytes:
    """The bytes of the file at ``path`` (`FileNotFoundError` / `ValueError` naming
    it): read once, then checksummed (`bytes_checksum`) and opened from memory
    (`open_fits` with ``data``)."""
    path = Path(path)
    _check_file(path)
    return path.read_bytes()


def _check_file(path: Path) -> None:
    """`FileNotFoundError` / `ValueError` naming ``path`` unless it is a file."""
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"cannot read {path} as a FITS exposure: it is a directory")


def bytes_checksum(data: bytes) -> str:
    """SHA-256 of a file's bytes (hex), read once by `read_bytes`."""
    return hashlib.sha256(data).hexdigest()


def _decompressed(data: bytes) -> bytes:
    """gzip or bzip2 content decompressed (recognised by its magic bytes), else as is."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    return data


def ascii_card_text(text: str) -> str:
    """``text`` safe in a FITS card: percent-encoded outside printable ASCII (RFC 3986;
    `urllib.parse.unquote` gives the text back), quotes kept readable."""
    return urllib.parse.quote(text, safe=" !#$&'()*+,-./:;=?@[]^_`{|}~")


@overload
def native(data: None) -> None: ...
@overload
def native(data: Any) -> np.ndarray: ...
def native(data: Any) -> np.ndarray | None:
    """The array in native byte order (FITS is big-endian)."""
    if data is None:
        return None
    data = np.asarray(data)
    if data.dtype.byteorder not in ("=", "|"):
        return data.astype(data.dtype.newbyteorder("="))
    return data


def as_float(image: np.ndarray) -> np.ndarray:
    """Floating images as they are, integer ones as float64."""
    return image if np.issubdtype(image.dtype, np.floating) else image.astype(np.float64)


def noise_variance(image: np.ndarray, gain, read_noise) -> np.ndarray:
    """``max(image, 0) / gain + read_noise²`` [ADU²]; infinite on non-finite pixels."""
    with np.errstate(invalid="ignore"):
        shot = 0.0 if gain is None else np.maximum(image, 0) / gain
    var = shot + (0.0 if read_noise is None else float(read_noise) ** 2)
    return np.where(np.isfinite(image), var, np.inf).astype(image.dtype)


def mask_planes(header) -> dict[str, int]:
    """The ``MP_<NAME> = bit`` cards of a MASK header (the LSST defaults if none)."""
    planes = {
        k[len(_PLANE_PREFIX) :]: int(v) for k, v in header.items() if k.startswith(_PLANE_PREFIX)
    }
    return planes or dict(DEFAULT_MASK_PLANES)


# -- helpers ------------------------------------------------------------------------------
def _is_image(hdu) -> bool:
    return isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))


def _without_encoding(header: fits.Header) -> fits.Header:
    header = header.copy()
    for key in _ENCODING:
        header.remove(key, ignore_missing=True, remove_all=True)
    return header


def _like(hdu, data: np.ndarray):
    """A new HDU of ``hdu``'s kind (and compression) holding ``data``."""
    header = _without_encoding(hdu.header)
    if isinstance(hdu, fits.CompImageHDU):
        return fits.CompImageHDU(data, header=header, **_compression(hdu))
    if isinstance(hdu, fits.PrimaryHDU):
        return fits.PrimaryHDU(data, header=header)
    return fits.ImageHDU(data, header=header)


def _compression(hdu: fits.CompImageHDU) -> dict:
    """The tile-compression settings of ``hdu`` (algorithm, tiles, quantisation)."""
    try:  # the binary table's header holds ZTILEn, ZQUANTIZ, ZNAMEi/ZVALi
        table = hdu._get_bintable_without_data().header
    except Exception:  # noqa: BLE001 - a private astropy method: fall back to the type only
        return dict(compression_type=hdu.compression_type)
    settings = dict(compression_type=table.get("ZCMPTYPE", hdu.compression_type))
    naxis = table.get("ZNAXIS", 0)
    tiles = [table.get(f"ZTILE{k}") for k in range(naxis, 0, -1)]
    if all(t is not None for t in tiles) and tiles:
        settings["tile_shape"] = tuple(int(t) for t in tiles)
    options = {}
    for k in range(1, 100):
        name = table.get(f"ZNAME{k}")
        if name is None:
            break
        options[str(name).upper()] = table.get(f"ZVAL{k}")
    if "NOISEBIT" in options:
        settings["quantize_level"] = float(options["NOISEBIT"])
    quantize = {"NO_DITHER": -1, "SUBTRACTIVE_DITHER_1": 1, "SUBTRACTIVE_DITHER_2": 2}
    if table.get("ZQUANTIZ") in quantize:
        settings["quantize_method"] = quantize[table["ZQUANTIZ"]]
    if "ZDITHER0" in table:
        settings["dither_seed"] = int(table["ZDITHER0"])
    return settings


def _repair(hdulist: fits.HDUList) -> list[str]:
    """Let astropy fix the cards it would refuse to write; the fixes made, one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hdulist.verify("fix+warn")
    repairs = []
    for w in caught:
        text = _one_line(w.message)
        if "Fixed" in text:
            repairs.append(text)
    return repairs


def _write(hdulist: fits.HDUList, f, target: Path) -> None:
    name = target.name.lower()
    if name.endswith(".gz"):
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as z:
            hdulist.writeto(z, output_verify="silentfix")
    elif name.endswith(".bz2"):
        with bz2.BZ2File(f, mode="wb") as z:
            hdulist.writeto(z, output_verify="silentfix")
    else:
        hdulist.writeto(f, output_verify="silentfix")


def _one_line(message) -> str:
    return " ".join(str(message).split())
