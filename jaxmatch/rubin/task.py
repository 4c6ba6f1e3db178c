"""`MatchBackgroundsPipelineTask`: jaxmatch as a Gen3 `PipelineTask`.

One quantum is one patch (``skymap``, ``tract``, ``patch``) in one ``band``: its
inputs are the warps of every visit of that patch and band, matched in one
batched call of `jaxmatch.MatchBackgroundsTask`. Outputs, one per visit:

- ``{inputCoaddName}Coadd_{warpType}Warp_jaxmatchBackground`` (storage class
  ``JaxmatchBackgroundModel``): the background model to add to the warp (zero
  for the reference visit; not written for a visit whose fit failed);
- ``{inputCoaddName}Coadd_{warpType}Warp_jaxmatchDiagnostics``
  (``StructuredDataDict``): ``visit``, ``refVisit``, ``isReference``, ``fitted``,
  ``fitRMS``, ``matchedMSE``, ``diffImVar`` [ADU, ADU², ADU²], ``matchMode`` and,
  in GLOBAL mode, ``group``;
- optionally (``doWriteMatchedWarps``) ``{inputCoaddName}Coadd_{warpType}Warp_bgMatched``
  (``JaxmatchExposure``): the warp plus its model.

The config has every field of `jaxmatch.MatchBackgroundsConfig` as a real
`lsst.pex.config` field (generated from the dataclass, same names, types,
defaults and allowed values), so ``config.matchMode = "GLOBAL"`` in a pipeline
YAML, ``-c matchBackgrounds:binSize=64`` on the ``pipetask`` command line and
config override files all work, plus ``doWriteMatchedWarps`` and the self-tuning
switch ``doTune`` (`jaxmatch.tune` on the patch's own warps before matching).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from typing import Any, cast

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.utils.timer import timeMethod

from .. import BackgroundModel, Exposure, MatchBackgroundsConfig, MatchBackgroundsTask, tune
from .._basis import basis_from_fields
from .._config import (  # the allowed values, kept in one place
    CHEBYSHEV_TERMS,
    DTYPES,
    GRID_STATISTICS,
    INTERP_STYLES,
    UNDERSAMPLE_STYLES,
)
from ..io import applyModel

__all__ = [
    "MatchBackgroundsConnections",
    "MatchBackgroundsPipelineConfig",
    "MatchBackgroundsPipelineTask",
]

EXPOSURE_STORAGE_CLASS = "JaxmatchExposure"
MODEL_STORAGE_CLASS = "JaxmatchBackgroundModel"
_PATCH = ("skymap", "tract", "patch")


class MatchBackgroundsConnections(
    pipeBase.PipelineTaskConnections,
    dimensions=(*_PATCH, "band"),
    defaultTemplates={"inputCoaddName": "deep", "warpType": "direct"},
):
    warps = cT.Input(
        doc="Warps of every visit of one patch and band, on the patch's pixel grid.",
        name="{inputCoaddName}Coadd_{warpType}Warp",
        storageClass=EXPOSURE_STORAGE_CLASS,
        dimensions=(*_PATCH, "visit"),
        multiple=True,
    )
    backgroundModels = cT.Output(
        doc="Per-visit background model to add to the warp (zero for the reference).",
        name="{inputCoaddName}Coadd_{warpType}Warp_jaxmatchBackground",
        storageClass=MODEL_STORAGE_CLASS,
        dimensions=(*_PATCH, "visit"),
        multiple=True,
    )
    diagnostics = cT.Output(
        doc="Per-visit fit diagnostics (fitRMS, matchedMSE, diffImVar, reference, status).",
        name="{inputCoaddName}Coadd_{warpType}Warp_jaxmatchDiagnostics",
        storageClass="StructuredDataDict",
        dimensions=(*_PATCH, "visit"),
        multiple=True,
    )
    matchedWarps = cT.Output(
        doc="Per-visit warp with its background model added (doWriteMatchedWarps).",
        name="{inputCoaddName}Coadd_{warpType}Warp_bgMatched",
        storageClass=EXPOSURE_STORAGE_CLASS,
        dimensions=(*_PATCH, "visit"),
        multiple=True,
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if (
            config is not None
            and not cast(MatchBackgroundsPipelineConfig, config).doWriteMatchedWarps
        ):
            del self.matchedWarps


# -- the config: MatchBackgroundsConfig's fields as pex_config fields --------------------
_CHOICES: dict[str, tuple[str, ...]] = {
    "gridStatistic": GRID_STATISTICS,
    "undersampleStyle": UNDERSAMPLE_STYLES,
    "interpStyle": INTERP_STYLES,
    "chebyshevTerms": CHEBYSHEV_TERMS,
    "dtype": DTYPES,
    "matchMode": ("REFERENCE", "GLOBAL"),
    "globalGauge": ("REFERENCE", "MEAN"),
    "globalWeights": ("NUISANCE", "PAIR"),
}
_SCALARS = {"bool": bool, "int": int, "float": float, "str": str}


def _field_docs() -> dict[str, str]:
    """Each field's description from the ``- `name`: text`` bullets of the docstring."""
    docs: dict[str, str] = {}
    names: list[str] = []
    for line in (MatchBackgroundsConfig.__doc__ or "").splitlines():
        bullet = re.match(r"\s*- ((?:`\w+`(?:, )?)+):\s*(.*)", line)
        if bullet:
            names = re.findall(r"`(\w+)`", bullet.group(1))
            for name in names:
                docs[name] = bullet.group(2).strip()
        elif names and line.strip():
            for name in names:
                docs[name] = (docs[name] + " " + line.strip()).strip()
        else:
            names = []
    return docs


def _pex_field(field: dataclasses.Field, doc: str) -> pexConfig.Field:
    """The `lsst.pex.config` field of one `MatchBackgroundsConfig` field."""
    type_name = str(field.type).replace(" ", "")
    optional = type_name.endswith("|None")
    base = type_name.removesuffix("|None")
    default = field.default
    if base == "tuple[str,...]":
        return pexConfig.ListField(dtype=str, doc=doc, default=list(cast(tuple[str, ...], default)))
    if field.name in _CHOICES:
        allowed = {choice: f"{field.name} = {choice}" for choice in _CHOICES[field.name]}
        return pexConfig.ChoiceField(
            dtype=str, doc=doc, default=default, allowed=allowed, optional=optional
        )
    if base not in _SCALARS:
        raise TypeError(f"MatchBackgroundsConfig.{field.name}: no pex_config field for {base}")
    return pexConfig.Field(dtype=_SCALARS[base], doc=doc, default=default, optional=optional)


def _match_fields() -> dict[str, pexConfig.Field]:
    docs = _field_docs()
    return {
        f.name: _pex_field(f, docs.get(f.name, f"See jaxmatch.MatchBackgroundsConfig.{f.name}."))
        for f in dataclasses.fields(MatchBackgroundsConfig)
    }


#: A pex_config `Config` with every `MatchBackgroundsConfig` field (generated).
MatchBackgroundsFields = type("MatchBackgroundsFields", (pexConfig.Config,), _match_fields())
MatchBackgroundsFields.__module__ = __name__
MatchBackgroundsFields.__doc__ = "Every field of `jaxmatch.MatchBackgroundsConfig` (pex_config)."


class MatchBackgroundsPipelineConfig(
    pipeBase.PipelineTaskConfig,
    MatchBackgroundsFields,
    pipelineConnections=MatchBackgroundsConnections,
):
    """Config of `MatchBackgroundsPipelineTask`: the matching fields plus I/O and tuning."""

    doWriteMatchedWarps = pexConfig.Field(
        dtype=bool,
        default=False,
        doc="Also write each warp with its background model added (the _bgMatched dataset).",
    )
    doTune = pexConfig.Field(
        dtype=bool,
        default=False,
        doc="Tune the continuous parameters (jaxmatch.tune, held-out loss) on each patch's "
        "own warps before matching it.",
    )
    tuneSteps = pexConfig.Field(
        dtype=int, default=30, doc="Optimiser steps of doTune.", check=lambda n: n >= 0
    )
    tuneParameters = pexConfig.ListField(
        dtype=str, default=["roughness"], doc="Parameters tuned by doTune (jaxmatch.tune)."
    )

    def toMatchConfig(self) -> MatchBackgroundsConfig:
        """The `jaxmatch.MatchBackgroundsConfig` of these fields (validated)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(MatchBackgroundsConfig)}
        values["badMaskPlanes"] = tuple(values["badMaskPlanes"])
        return MatchBackgroundsConfig(**values)

    @classmethod
    def fromMatchConfig(cls, config: MatchBackgroundsConfig) -> MatchBackgroundsPipelineConfig:
        """A pipeline config whose matching fields are those of ``config``."""
        out = cls()
        for name, value in config.toDict().items():
            setattr(out, name, value)
        return out

    def validate(self):
        super().validate()
        try:
            self.toMatchConfig()
        except (ValueError, TypeError) as err:
            raise ValueError(f"{type(self).__name__}: {err}") from err


class MatchBackgroundsPipelineTask(pipeBase.PipelineTask):
    """Match the backgrounds of all visits of one patch and band (one batched fit)."""

    ConfigClass = MatchBackgroundsPipelineConfig
    _DefaultName = "matchBackgrounds"
    config: MatchBackgroundsPipelineConfig

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # pipetask sets the "lsst" loggers to INFO; this task logs under "jaxmatch",
        # which would stay at the root's WARNING, so its INFO lines would be lost from
        # the stored task log. Give it INFO too, unless the user set a level
        # (pipetask --log-level jaxmatch=DEBUG sets one before the task is built).
        root = logging.getLogger("jaxmatch")
        if root.level == logging.NOTSET:
            root.setLevel(logging.INFO)

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        refs = sorted(inputRefs.warps, key=lambda ref: ref.dataId["visit"])
        visits = [int(ref.dataId["visit"]) for ref in refs]
        warps = [butlerQC.get(ref) for ref in refs]
        result = self.run(warps, visits)
        by_visit = {
            name: {int(ref.dataId["visit"]): ref for ref in getattr(outputRefs, name)}
            for name in ("backgroundModels", "diagnostics")
            + (("matchedWarps",) if self.config.doWriteMatchedWarps else ())
        }
        for i, visit in enumerate(visits):
            butlerQC.put(result.diagnostics[i], by_visit["diagnostics"][visit])
            if result.backgroundModels[i] is not None:
                butlerQC.put(result.backgroundModels[i], by_visit["backgroundModels"][visit])
            if self.config.doWriteMatchedWarps and result.matchedWarps[i] is not None:
                butlerQC.put(result.matchedWarps[i], by_visit["matchedWarps"][visit])

    @timeMethod
    def run(self, warps: Sequence[Exposure], visits: Sequence[int]) -> pipeBase.Struct:
        """Match ``warps`` (one per visit, same pixel grid) in one batched call.

        Returns ``Struct(backgroundModels, diagnostics, matchedWarps, refVisit,
        config)``: lists in the order of ``visits`` (None for a failed fit; the
        reference's model is zero; ``matchedWarps`` is None unless
        ``doWriteMatchedWarps``), the reference visit and the
        `MatchBackgroundsConfig` used (the tuned one with ``doTune``).
        """
        warps, visits = list(warps), [int(v) for v in visits]
        if len(warps) != len(visits):
            raise ValueError(f"{len(warps)} warps but {len(visits)} visits")
        config = self.config.toMatchConfig()
        if self.config.doTune and len(warps) > 1:
            config = self._tuned(warps, config)
        # an LsstLogAdapter (a logging.LoggerAdapter) serves the core task as a Logger
        core = MatchBackgroundsTask(config, log=self.log.getChild("core"))  # pyright: ignore[reportArgumentType]
        infos = core.run(warps, "warp").backgroundInfoList
        ref = next(i for i, info in enumerate(infos) if info.isReference)
        models = [info.backgroundModel for info in infos]
        models[ref] = _zero_like(models, warps[ref])
        diagnostics = [
            _diagnostics(info, visit, visits[ref], config) for info, visit in zip(infos, visits)
        ]
        matched = None
        if self.config.doWriteMatchedWarps:
            matched = [None if m is None else applyModel(m, w) for m, w in zip(models, warps)]
        self.log.info(
            "Matched %d visits in %s mode: reference visit %d, %d failed",
            len(warps),
            config.matchMode,
            visits[ref],
            sum(1 for d in diagnostics if not d["fitted"]),
        )
        self.metadata["numExposures"] = len(warps)
        self.metadata["numFailed"] = sum(1 for d in diagnostics if not d["fitted"])
        self.metadata["refVisit"] = visits[ref]
        self.metadata["matchMode"] = config.matchMode
        for key, value in core.metadata.items():
            if isinstance(value, (bool, int, float, str)):
                self.metadata[f"core_{key}"] = value
        return pipeBase.Struct(
            backgroundModels=models,
            diagnostics=diagnostics,
            matchedWarps=matched,
            refVisit=visits[ref],
            config=config,
        )

    def _tuned(self, warps, config: MatchBackgroundsConfig) -> MatchBackgroundsConfig:
        result = tune(
            warps, config, steps=self.config.tuneSteps, parameters=list(self.config.tuneParameters)
        )
        self.log.info(
            "Tuned %s in %d steps: held-out loss %.6g -> %.6g",
            ", ".join(self.config.tuneParameters),
            self.config.tuneSteps,
            float(result.history[0]),
            float(result.history[-1]),
        )
        self.metadata["tuneLossBefore"] = float(result.history[0])
        self.metadata["tuneLossAfter"] = float(result.history[-1])
        self.metadata["tunedSplineRoughness"] = float(result.config.splineRoughness)
        return result.config


def _zero_like(models: list[BackgroundModel | None], warp: Exposure) -> BackgroundModel:
    """A zero model of the fitted models' family (order-0 Chebyshev when none fitted)."""
    import jax.numpy as jnp

    fitted = next((m for m in models if m is not None), None)
    if fitted is not None:
        return BackgroundModel(jnp.zeros_like(fitted.coefficients), fitted.basis)
    h, w = (int(s) for s in warp.image.shape[-2:])
    basis = basis_from_fields("CHEBYSHEV", (h, w))
    return BackgroundModel(jnp.zeros((1, 1), warp.image.dtype), basis)


def _diagnostics(
    info, visit: int, ref_visit: int, config: MatchBackgroundsConfig
) -> dict[str, Any]:
    """The per-visit diagnostics record (plain types, for the YAML formatter)."""

    def number(value):
        return None if value is None else float(value)

    out = {
        "visit": visit,
        "refVisit": ref_visit,
        "isReference": bool(info.isReference),
        "fitted": bool(info.isReference or info.backgroundModel is not None),
        "fitRMS": number(info.fitRMS),
        "matchedMSE": number(info.matchedMSE),
        "diffImVar": number(info.diffImVar),
        "matchMode": config.matchMode,
    }
    if getattr(info, "group", None) is not None:
        out["group"] = int(info.group)
    return out
