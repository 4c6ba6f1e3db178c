"""The output plan of ``jaxmatch match``: every path it will write, checked before any work.

For an input ``NAME.fits`` (the name as given, ``.gz`` / ``.fz`` / ``.bz2`` included)
the outputs in ``--out`` are:

- ``NAME.fits``: the matched file, same name, same layout as the input;
- ``NAME.model.fits``: the background model (`jaxmatch.io.readModel`); for a file
  with several images (``CCD1``, ``CCD2``) one per image, ``NAME.CCD1.model.fits``;
  none for the reference;
- ``NAME.bkg.fits`` (with the input's compression suffix) with ``--model-image``:
  the evaluated model as an image, in the layout of the input's images.

`plan_outputs` refuses (`PlanError`, one line naming both files) an output path
that two outputs share, that is an input, that is the table, or that exists and is
not a jaxmatch output of the same input (recognised by its ``JMINPUT`` card).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from astropy.io import fits

from ._fitsfile import ascii_card_text

_FITS_SUFFIXES = (".fits", ".fit", ".fts")
_COMPRESSED_SUFFIXES = (".gz", ".fz", ".bz2")


class PlanError(ValueError):
    """Two outputs (or an output and another file) would share a path."""


class Outputs(NamedTuple):
    """The outputs of one input file.

    Attributes:
        source: the input file.
        matched: the matched file.
        models: image key → model file (no entry for a reference image).
        model_image: the model image, or None without ``--model-image``.
    """

    source: Path
    matched: Path
    models: dict[str, Path]
    model_image: Path | None

    def paths(self) -> list[tuple[str, Path]]:
        """``(what, path)`` of every output, e.g. ``("matched image", out/x.fits)``."""
        items = [("matched image", self.matched)]
        items += [
            ("model" if key == "*" else f"model of {key}", p) for key, p in self.models.items()
        ]
        if self.model_image is not None:
            items.append(("model image", self.model_image))
        return items


def split_name(name: str) -> tuple[str, str]:
    """``(stem, suffix)``: ``"v0.fits.gz"`` → ``("v0", ".fits.gz")``, ``"x.fz"`` →
    ``("x", ".fz")``, no FITS suffix → ``(name, "")``."""
    compressed = ""
    for s in _COMPRESSED_SUFFIXES:
        if name.lower().endswith(s) and len(name) > len(s):
            name, compressed = name[: -len(s)], name[-len(s) :]
            break
    for s in _FITS_SUFFIXES:
        if name.lower().endswith(s) and len(name) > len(s):
            return name[: -len(s)], name[-len(s) :] + compressed
    return name, compressed


def output_names(out: Path, source: Path, keys: Sequence[str], model_image: bool) -> Outputs:
    """The `Outputs` of ``source`` whose images are ``keys``."""
    stem, suffix = split_name(source.name)
    if len(keys) == 1:
        models = {keys[0]: out / f"{stem}.model.fits"}
    else:
        models = {key: out / f"{stem}.{_safe_key(key)}.model.fits" for key in keys}
    image_suffix = suffix if suffix.lower().startswith(_FITS_SUFFIXES) else ".fits" + suffix
    bkg = out / f"{stem}.bkg{image_suffix}" if model_image else None
    return Outputs(source, out / source.name, models, bkg)


def plan_outputs(outputs: Sequence[Outputs], inputs: Sequence[Path], table: Path | None) -> None:
    """Refuse a plan whose outputs collide (`PlanError`, one line naming both files).

    Checks, in this order: two outputs on one path; an output on an input; the
    table on an output or an input; an existing file at an output path that is not
    a jaxmatch output of the same input.
    """
    taken: dict[Path, str] = {}
    for o in outputs:
        for what, path in o.paths():
            key = path.resolve()
            mine = f"{o.source}'s {what}"
            if key in taken:
                raise PlanError(f"{taken[key]} and {mine} would both be written to {path}")
            taken[key] = mine
    sources = {p.resolve(): p for p in inputs}
    for key, mine in taken.items():
        if key in sources:
            raise PlanError(f"{mine} would overwrite the input {sources[key]}")
    if table is not None:
        key = table.resolve()
        if key in taken:
            raise PlanError(f"--table {table} and {taken[key]} would be the same file")
        if key in sources:
            raise PlanError(f"--table {table} would overwrite the input {sources[key]}")
    for o in outputs:
        for what, path in o.paths():
            if path.exists() and not is_output_of(path, o.source):
                raise PlanError(
                    f"{path} exists and is not a jaxmatch output of {o.source}: it would be "
                    f"overwritten by {o.source}'s {what} (move it or choose another --out)"
                )


def is_output_of(path: Path, source: Path) -> bool:
    """True when ``path`` is a FITS file jaxmatch wrote for an input named like ``source``."""
    if not path.is_file():
        return False
    try:
        header = fits.getheader(path, 0)
    except Exception:  # noqa: BLE001 - not FITS, damaged: not ours
        return False
    return header.get("JMINPUT") == ascii_card_text(source.name)


def _safe_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
