"""Background models as data: save, load and apply a fitted `BackgroundModel`.

A model file is a small FITS file (readable by any FITS tool, ``fitsheader``
shows what it holds):

- primary HDU, no data; header: ``JMMODEL = 'BackgroundModel'``, ``JMFORMAT``
  (the format version, 1), the `Basis` fields ``KIND`` (``CHEBYSHEV`` or
  ``SPLINE``), ``HEIGHT``, ``WIDTH`` [pixels] (the image the model was fitted
  on), ``ORDER_Y``, ``ORDER_X``, ``STYLE``, optionally ``CONFIG`` (the
  `MatchBackgroundsConfig` as a JSON string) and any extra keywords the caller
  passes;
- ``COEFFS``: the coefficient matrix ``C``, shape ``(..., ky, kx)`` (leading axes
  for a batch of models), in its own dtype;
- ``KNOTS_Y``, ``KNOTS_X`` (spline only): the knot positions [pixels], float64.

The round trip is exact: the loaded `Basis` equals the saved one (so a jitted
function taking the model does not recompile) and ``getImage()`` is bit for bit
the same.
"""
# pyright: reportAttributeAccessIssue=false, reportAbstractUsage=false
# (astropy's stubs type hdul[name] as HDUList; each family's fields are read under its KIND.)

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._exposure import Exposure
from ._model import BackgroundModel, Basis

_FORMAT = 1
_KINDS = ("CHEBYSHEV", "SPLINE")


def writeModel(
    model: BackgroundModel,
    path: str | os.PathLike,
    *,
    config: Any = None,
    header: Mapping[str, Any] | None = None,
) -> None:
    """Save a fitted model (one, or a batch of one family) as FITS, atomically.

    Arguments:
        model: the `BackgroundModel`, e.g. ``info.backgroundModel`` from
            `MatchBackgroundsTask.run` or ``result.model`` from `jaxmatch.match`.
        path: the target file (``.fits`` by convention, e.g. ``NAME.model.fits``).
        config: the `MatchBackgroundsConfig` (or a dict of its fields) the model
            was fitted with, stored as JSON; None stores none.
        header: extra primary-header keywords (e.g. ``{"FITRMS": 0.3}``).
    """
    from astropy.io import fits

    from ._atomic import atomic_write

    if not isinstance(model, BackgroundModel):
        raise TypeError(f"expected a BackgroundModel, got {type(model).__name__}")
    basis = model.basis
    coefficients = np.asarray(model.coefficients)
    primary = fits.Header()
    primary["JMMODEL"] = ("BackgroundModel", "a jaxmatch background model")
    primary["JMFORMAT"] = (_FORMAT, "version of the jaxmatch model file format")
    primary["KIND"] = (basis.kind, "CHEBYSHEV or SPLINE")
    primary["HEIGHT"] = (basis.shape[0], "[pixels] rows of the fitted image")
    primary["WIDTH"] = (basis.shape[1], "[pixels] columns of the fitted image")
    primary["ORDER_Y"] = (basis.order_y, "Chebyshev order along y")
    primary["ORDER_X"] = (basis.order_x, "Chebyshev order along x")
    primary["STYLE"] = (basis.style, "spline interpolation style")
    if config is not None:
        values = config.toDict() if hasattr(config, "toDict") else dict(config)
        primary["CONFIG"] = (json.dumps(values, sort_keys=True), "MatchBackgroundsConfig")
    for key, value in (header or {}).items():
        primary[key] = value
    hdus = [fits.PrimaryHDU(header=primary), fits.ImageHDU(coefficients, name="COEFFS")]
    if basis.kind == "SPLINE":
        for name, knots in (("KNOTS_Y", basis.knots_y), ("KNOTS_X", basis.knots_x)):
            hdus.append(fits.ImageHDU(np.asarray(knots, dtype=np.float64), name=name))
    hdulist = fits.HDUList(hdus)
    atomic_write(Path(path), lambda f: hdulist.writeto(f))


def readModel(path: str | os.PathLike) -> BackgroundModel:
    """Load a model saved by `writeModel`.

    Raises `FileNotFoundError` for a missing file and `ValueError` naming the file
    when it is not a jaxmatch model file.
    """
    primary, arrays = _read(path)
    try:
        kind = str(primary["KIND"])
        if kind not in _KINDS:
            raise ValueError(f"KIND must be one of {_KINDS}, got {kind!r}")
        basis = Basis(
            kind,
            (int(primary["HEIGHT"]), int(primary["WIDTH"])),
            order_y=int(primary["ORDER_Y"]),
            order_x=int(primary["ORDER_X"]),
            style=str(primary["STYLE"]),
            knots_y=tuple(float(k) for k in arrays.get("KNOTS_Y", ())),
            knots_x=tuple(float(k) for k in arrays.get("KNOTS_X", ())),
        )
        coefficients = arrays["COEFFS"]
        if coefficients.ndim < 2 or coefficients.shape[-2:] != basis.coefficient_shape:
            raise ValueError(
                f"coefficients of shape {coefficients.shape} do not fit the basis "
                f"(expected (..., {basis.coefficient_shape[0]}, {basis.coefficient_shape[1]}))"
            )
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path} is not a valid jaxmatch model file: {err}") from None
    return BackgroundModel(jnp.asarray(coefficients), basis)


def readModelConfig(path: str | os.PathLike) -> dict[str, Any] | None:
    """The config dict stored with a model (None if none was stored).

    ``MatchBackgroundsConfig.fromDict(readModelConfig(path))`` rebuilds the config.
    """
    primary, _ = _read(path)
    if "CONFIG" not in primary:
        return None
    try:
        return json.loads(primary["CONFIG"])
    except ValueError as err:
        raise ValueError(f"{path}: the stored CONFIG is not valid JSON: {err}") from None


def applyModel(model: BackgroundModel, exposure: Exposure) -> Exposure:
    """The matched exposure: ``image + model`` (mask and variance unchanged).

    Arguments:
        model: a fitted `BackgroundModel` (one, or a batch ``(N, ky, kx)``).
        exposure: an `Exposure` of the shape the model was fitted on; a batch
            ``(N, H, W)`` takes one model per exposure (or one model for all).

    The result keeps the exposure's dtype. Raises `ValueError` when the pixel grid
    or the batch shape differs from the model's.
    """
    if not isinstance(model, BackgroundModel):
        raise TypeError(f"expected a BackgroundModel, got {type(model).__name__}")
    if not isinstance(exposure, Exposure):
        raise TypeError(f"expected an Exposure, got {type(exposure).__name__}")
    shape = tuple(exposure.getBBoxShape())
    if shape != tuple(model.basis.shape):
        raise ValueError(
            f"the model was fitted on a {model.basis.shape[0]}x{model.basis.shape[1]} image, "
            f"the exposure is {shape[0]}x{shape[1]}"
        )
    model_batch = tuple(model.coefficients.shape[:-2])
    if model_batch and model_batch != exposure.batch_shape:
        raise ValueError(
            f"a batch of models {model_batch} cannot be applied to exposures of batch shape "
            f"{exposure.batch_shape}"
        )
    image = exposure.image + model.getImage().astype(exposure.image.dtype)
    return Exposure(
        image, exposure.mask, exposure.variance, mask_planes=exposure.getMaskPlaneDict()
    )


def _read(path) -> tuple[Any, dict[str, np.ndarray]]:
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        with fits.open(path, memmap=False) as hdus:
            primary = hdus[0].header.copy()
            arrays = {}
            for hdu in hdus[1:]:
                data = np.asarray(hdu.data)
                arrays[hdu.name.upper()] = data.astype(data.dtype.newbyteorder("="))
    except (OSError, TypeError, ValueError, IndexError) as err:
        raise ValueError(f"cannot read {path} as a jaxmatch model file: {err}") from err
    if primary.get("JMMODEL") != "BackgroundModel":
        raise ValueError(f"{path} is not a jaxmatch model file (no JMMODEL card)")
    if primary.get("JMFORMAT", 0) > _FORMAT:
        raise ValueError(
            f"{path} has model format {primary['JMFORMAT']}, newer than this jaxmatch "
            f"reads ({_FORMAT}); upgrade jaxmatch"
        )
    return primary, arrays
