"""Butler formatters of jaxmatch's storage classes (FITS through `jaxmatch.io`).

- ``JaxmatchExposure`` (pytype `jaxmatch.Exposure`): `ExposureFormatter`, the
  LSST multi-extension layout (``IMAGE``, ``MASK`` with ``MP_*`` plane cards,
  ``VARIANCE``) of `jaxmatch.io.writeExposure` / `readExposure`;
- ``JaxmatchBackgroundModel`` (pytype `jaxmatch.BackgroundModel`):
  `BackgroundModelFormatter`, the model file of `jaxmatch.io.writeModel` /
  `readModel`.

Both are `lsst.daf.butler.FormatterV2` subclasses that read and write a local
file; the butler handles remote stores by copying to and from a local file.
"""

from __future__ import annotations

from typing import Any

from lsst.daf.butler import FormatterV2
from lsst.resources import ResourcePath

from .. import BackgroundModel, Exposure, io

__all__ = ["BackgroundModelFormatter", "ExposureFormatter"]


class ExposureFormatter(FormatterV2):
    """FITS formatter of a `jaxmatch.Exposure` (storage class ``JaxmatchExposure``)."""

    default_extension = ".fits"
    supported_extensions = frozenset({".fits", ".fit", ".fits.gz", ".fits.fz"})
    can_read_from_local_file = True

    def read_from_local_file(
        self, path: str, component: str | None = None, expected_size: int = -1
    ) -> Any:
        return io.readExposure(path)

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        if not isinstance(in_memory_dataset, Exposure):
            raise TypeError(
                f"ExposureFormatter writes a jaxmatch.Exposure, got {type(in_memory_dataset)}"
            )
        io.writeExposure(in_memory_dataset, uri.ospath)


class BackgroundModelFormatter(FormatterV2):
    """FITS formatter of a `jaxmatch.BackgroundModel` (``JaxmatchBackgroundModel``)."""

    default_extension = ".fits"
    supported_extensions = frozenset({".fits"})
    can_read_from_local_file = True

    def read_from_local_file(
        self, path: str, component: str | None = None, expected_size: int = -1
    ) -> Any:
        return io.readModel(path)

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        if not isinstance(in_memory_dataset, BackgroundModel):
            raise TypeError(
                "BackgroundModelFormatter writes a jaxmatch.BackgroundModel, got "
                f"{type(in_memory_dataset)}"
            )
        io.writeModel(in_memory_dataset, uri.ospath)
