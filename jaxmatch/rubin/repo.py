"""Butler repository helpers: create a jaxmatch repository, register the dimension
records warps need, ingest FITS warps with their data IDs.

A warp's data ID is a `WarpDataId`: the visit (with its instrument, physical
filter, band and day of observation) and the patch (skymap, tract, patch).
`register_dimensions` inserts only the records a warp needs — ``instrument``,
``physical_filter`` (which implies ``band``), ``day_obs``, ``visit``, ``skymap``,
``tract``, ``patch`` — without sky regions: the warps themselves relate visits to
patches when ``pipetask`` builds its graph.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from . import SEED_CONFIG, require_lsst

__all__ = [
    "WARP_DATASET_TYPE",
    "WarpDataId",
    "create_repo",
    "ingest_warps",
    "register_dimensions",
    "register_warp_type",
]

#: The default dataset type of input warps (the pipeline's default template).
WARP_DATASET_TYPE = "deepCoadd_directWarp"
_WARP_DIMENSIONS = ("skymap", "tract", "patch", "visit")


class WarpDataId(NamedTuple):
    """The data ID of one warp: a visit seen on one patch.

    ``day_obs`` is the observing day as an integer ``YYYYMMDD``; ``band`` is the
    abstract filter (``r``), ``physical_filter`` the instrument's filter name.
    """

    instrument: str
    visit: int
    physical_filter: str
    band: str
    day_obs: int
    skymap: str
    tract: int
    patch: int

    def data_id(self) -> dict[str, str | int]:
        """The required keys of the warp's butler data ID."""
        return {
            "instrument": self.instrument,
            "visit": self.visit,
            "skymap": self.skymap,
            "tract": self.tract,
            "patch": self.patch,
        }


def create_repo(root: str | os.PathLike, *, seed_config: str | os.PathLike | None = None):
    """Create an empty butler repository at ``root`` that knows jaxmatch's storage classes.

    Equivalent to ``butler create --seed-config jaxmatch/rubin/configs/seed.yaml ROOT``:
    the storage classes and formatters go into the repository's own ``butler.yaml``,
    so ``butler`` and ``pipetask`` need no environment variable. Returns a writeable
    `lsst.daf.butler.Butler`. Raises `FileExistsError` when ``root`` already holds a
    repository.
    """
    require_lsst()
    from lsst.daf.butler import Butler, Config

    root = Path(root)
    if (root / "butler.yaml").exists():
        raise FileExistsError(f"{root} already holds a butler repository (butler.yaml)")
    Butler.makeRepo(str(root), config=Config(str(seed_config or SEED_CONFIG)))
    return Butler.from_config(str(root), writeable=True)


def register_dimensions(butler, data_ids: Iterable[WarpDataId], *, patches_per_side: int = 10):
    """Insert the dimension records of ``data_ids`` (idempotent: existing ones are kept).

    ``patches_per_side`` sets the skymap's ``patch_nx_max`` / ``patch_ny_max``; patch
    ids must be below ``patches_per_side²``. Raises `ValueError` naming a data ID
    whose visit is already registered with another filter or day.
    """
    data_ids = list(data_ids)
    records: dict[str, dict[tuple, dict]] = {
        k: {}
        for k in ("instrument", "physical_filter", "day_obs", "visit", "skymap", "tract", "patch")
    }
    for d in data_ids:
        if not 0 <= d.patch < patches_per_side**2:
            raise ValueError(f"{d}: patch must lie in [0, {patches_per_side**2})")
        _add(
            records["instrument"],
            (d.instrument,),
            dict(
                name=d.instrument,
                visit_max=2**31 - 1,
                exposure_max=2**31 - 1,
                detector_max=1000,
                class_name="jaxmatch.rubin.repo.WarpDataId",
            ),
            d,
        )
        _add(
            records["physical_filter"],
            (d.instrument, d.physical_filter),
            dict(instrument=d.instrument, name=d.physical_filter, band=d.band),
            d,
        )
        _add(
            records["day_obs"],
            (d.instrument, d.day_obs),
            dict(instrument=d.instrument, id=d.day_obs),
            d,
        )
        _add(
            records["visit"],
            (d.instrument, d.visit),
            dict(
                instrument=d.instrument,
                id=d.visit,
                name=f"{d.instrument}_{d.visit}",
                physical_filter=d.physical_filter,
                day_obs=d.day_obs,
            ),
            d,
        )
        _add(
            records["skymap"],
            (d.skymap,),
            dict(
                name=d.skymap,
                hash=d.skymap.encode(),
                tract_max=2**31 - 1,
                patch_nx_max=patches_per_side,
                patch_ny_max=patches_per_side,
            ),
            d,
        )
        _add(records["tract"], (d.skymap, d.tract), dict(skymap=d.skymap, id=d.tract), d)
        _add(
            records["patch"],
            (d.skymap, d.tract, d.patch),
            dict(
                skymap=d.skymap,
                tract=d.tract,
                id=d.patch,
                cell_x=d.patch % patches_per_side,
                cell_y=d.patch // patches_per_side,
            ),
            d,
        )
    for element, rows in records.items():
        for row in rows.values():
            butler.registry.syncDimensionData(element, row)


def _add(table: dict, key: tuple, row: dict, data_id: WarpDataId) -> None:
    old = table.setdefault(key, row)
    if old != row:
        raise ValueError(f"{data_id}: {key} is given twice with different values ({old} vs {row})")


def register_warp_type(butler, name: str = WARP_DATASET_TYPE):
    """Register (if needed) and return the warp dataset type ``name`` (``JaxmatchExposure``)."""
    from lsst.daf.butler import DatasetType

    from .task import EXPOSURE_STORAGE_CLASS

    dataset_type = DatasetType(
        name, butler.dimensions.conform(_WARP_DIMENSIONS), EXPOSURE_STORAGE_CLASS
    )
    butler.registry.registerDatasetType(dataset_type)
    return dataset_type


def ingest_warps(
    butler,
    warps: Sequence[tuple[str | os.PathLike, WarpDataId]],
    *,
    run: str,
    dataset_type: str = WARP_DATASET_TYPE,
    transfer: str | None = "copy",
    check: bool = True,
):
    """Ingest FITS warps (files `jaxmatch.io.readExposure` reads) with their data IDs.

    Arguments:
        butler: a writeable `lsst.daf.butler.Butler` of a jaxmatch repository
            (`create_repo`).
        warps: ``(path, WarpDataId)`` pairs; the dimension records are registered.
        run: the RUN collection that receives them (created if needed).
        dataset_type: the warps' dataset type (registered if needed).
        transfer: the butler's transfer mode (``"copy"``, ``"move"``, ``"symlink"``,
            ``"direct"``, ...).
        check: read each file first, so a file that is not a FITS exposure is refused
            (`ValueError` naming it) before anything is ingested.

    Returns the ingested `lsst.daf.butler.DatasetRef` list, in the order of ``warps``.
    """
    from lsst.daf.butler import DatasetRef, FileDataset
    from lsst.resources import ResourcePath

    from .. import io
    from .formatters import ExposureFormatter

    warps = [(Path(path), data_id) for path, data_id in warps]
    if check:
        for path, _ in warps:
            io.readExposure(path)  # FileNotFoundError / ValueError naming the file
    register_dimensions(butler, [d for _, d in warps])
    type_ = register_warp_type(butler, dataset_type)
    butler.registry.registerRun(run)
    datasets = [
        FileDataset(
            path=ResourcePath(path.resolve()),
            refs=[DatasetRef(type_, _coordinate(butler, data_id), run=run)],
            formatter=ExposureFormatter,
        )
        for path, data_id in warps
    ]
    butler.ingest(*datasets, transfer=transfer)
    return [d.refs[0] for d in datasets]


def _coordinate(butler, data_id: WarpDataId):
    from lsst.daf.butler import DataCoordinate

    return DataCoordinate.standardize(data_id.data_id(), universe=butler.dimensions)
