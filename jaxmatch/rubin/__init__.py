"""Rubin (LSST Gen3) middleware integration: a `PipelineTask` that ``pipetask`` runs.

Needs the optional extra ``pip install "jaxmatch[lsst]"`` (lsst-daf-butler,
lsst-pipe-base, lsst-pex-config, lsst-ctrl-mpexec; no afw). Nothing here imports
lsst until an attribute is used, and ``import jaxmatch`` never imports this package.

Contents (see the README section "Rubin (Gen3) users"):

- `MatchBackgroundsPipelineTask`, `MatchBackgroundsPipelineConfig`,
  `MatchBackgroundsConnections`: the task over all visits of one patch and band.
- `ExposureFormatter`, `BackgroundModelFormatter` (`jaxmatch.rubin.formatters`):
  FITS I/O of the storage classes ``JaxmatchExposure`` and
  ``JaxmatchBackgroundModel`` through `jaxmatch.io`.
- `SEED_CONFIG`, `CONFIG_DIR`, `PIPELINE`: the shipped butler seed config, the
  config directory (for ``DAF_BUTLER_CONFIG_PATH``) and the pipeline YAML.
- `create_repo`, `register_dimensions`, `ingest_warps`, `WarpDataId`: repository
  helpers (`jaxmatch.rubin.repo`).
- `jaxmatch.rubin.demo`: ``jaxmatch lsst-demo``; `jaxmatch.rubin.bps`: a BPS
  submit file for Parsl's local site (extra ``[bps]``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

_HERE = Path(__file__).resolve().parent
#: The butler seed config declaring jaxmatch's storage classes and formatters.
SEED_CONFIG = _HERE / "configs" / "seed.yaml"
#: A config directory for ``DAF_BUTLER_CONFIG_PATH`` (the same declarations).
CONFIG_DIR = _HERE / "configs"
#: The shipped pipeline (one task, label ``matchBackgrounds``).
PIPELINE = _HERE / "pipelines" / "MatchBackgrounds.yaml"

_LAZY = {
    "MatchBackgroundsPipelineTask": "task",
    "MatchBackgroundsPipelineConfig": "task",
    "MatchBackgroundsConnections": "task",
    "ExposureFormatter": "formatters",
    "BackgroundModelFormatter": "formatters",
    "create_repo": "repo",
    "register_dimensions": "repo",
    "ingest_warps": "repo",
    "WarpDataId": "repo",
    "EXPOSURE_STORAGE_CLASS": "task",
    "MODEL_STORAGE_CLASS": "task",
}

__all__ = ["CONFIG_DIR", "PIPELINE", "SEED_CONFIG", *_LAZY]  # pyright: ignore[reportUnsupportedDunderAll]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jaxmatch.rubin' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def require_lsst() -> None:
    """Raise `ImportError` naming the extra when the Rubin middleware is missing."""
    try:
        import lsst.daf.butler  # noqa: F401
        import lsst.pex.config  # noqa: F401
        import lsst.pipe.base  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"jaxmatch.rubin needs the Rubin middleware ({err.name} is missing): "
            'install the extra with pip install "jaxmatch[lsst]"'
        ) from err
