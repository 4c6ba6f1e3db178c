"""`MatchBackgroundsTask`: the LSST task interface as an equinox module.

The Python edge of jaxmatch, shaped like ``lsst.pipe.tasks.matchBackgrounds.
MatchBackgroundsTask`` (same methods, signatures and result Structs), on top of
the batched engine `jaxmatch.match`. The task's float leaves — the three
reference-cost weights, the soft-min temperature and the spline roughness — are
JAX arrays, so ``eqx.filter_grad`` differentiates a loss with respect to them and
``eqx.filter_jit`` does not recompile when they change; the config is static.

Data references in ``expRefList`` may be in-memory `Exposure` objects, paths to
FITS files (`jaxmatch.io.readExposure`), or any object with ``get(datasetType)``
and optionally ``datasetExists(datasetType)`` (a Butler-like store).
"""
# pyright: reportAttributeAccessIssue=false
# (Struct fields are dynamic.)

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._config import Config, MatchBackgroundsConfig, MatchBackgroundsTaskConfig
from ._exposure import Exposure, stack_exposures, usable_mask
from ._global import group_summary, match_all
from ._match import FITTED, ILL_CONDITIONED, NAN_DIAGNOSTIC, STATUS_MESSAGES, match
from ._reference import (
    gen3_reference_costs,
    gen3_reference_statistics,
    reference_costs,
    reference_statistics,
    select_reference,
    soft_reference_exposure,
    softmin_weights,
)
from ._scaler import ImageScaler
from ._taskbase import Struct, Task
from ._taskpath import (
    DEFAULT_CHUNK_SIZE,
    ListFit,
    batch_item,
    check_chunk_size,
    chunk_length,
    match_list,
)


class MatchBackgroundsTask(Task):
    """Match the backgrounds of coadd temp exposures to a reference (LSST interface).

    Arguments:
        config: a `MatchBackgroundsTaskConfig` (mutable, LSST style; the default,
            LSST settings) or a frozen `MatchBackgroundsConfig`. The task keeps the
            object: ``task.config.order = 4`` changes the next call, as in LSST.
        name, parentTask, log: as for every LSST task.

    Each call validates the config and takes its frozen snapshot by value (the
    compiled key): equal configs share compilations, whichever task holds them.

    Array leaves (differentiable, tunable): ``refWeights`` ``(3,)`` =
    (coverage, variance, level) weights of the Gen2 reference cost,
    ``refWeightsGen3`` ``(3,)`` = (chi2, variance, globalCoverage) weights of the
    Gen3 cost, ``softminTemperature`` and ``splineRoughness``, initialised from the
    config and set again when one of their config fields is assigned.
    """

    ConfigClass = MatchBackgroundsTaskConfig
    _DefaultName = "matchBackgrounds"

    refWeights: Float[Array, " 3"]
    refWeightsGen3: Float[Array, " 3"]
    softminTemperature: Float[Array, ""]
    splineRoughness: Float[Array, ""]

    def __init__(self, config=None, *, name=None, parentTask=None, log=None):
        super().__init__(config, name=name, parentTask=parentTask, log=log)
        cfg = self.config
        if not (
            isinstance(cfg, MatchBackgroundsConfig)
            or (isinstance(cfg, Config) and cfg.Frozen is MatchBackgroundsConfig)
        ):
            raise TypeError(
                "config must be a MatchBackgroundsTaskConfig or MatchBackgroundsConfig, "
                f"got {type(cfg).__name__}"
            )
        for name_, value in _leaves(cfg).items():
            setattr(self, name_, value)

    def _configChanged(self, previous) -> None:
        # LSST reads the weights from the config at each call: assigning one of these
        # fields sets its array leaf again (other leaves keep their, maybe tuned, values).
        for name_, value in _leaves(self.config).items():
            fields = _LEAF_FIELDS[name_]
            if any(getattr(previous, f, None) != getattr(self.config, f) for f in fields):
                object.__setattr__(self, name_, value)

    # -- LSST methods -----------------------------------------------------------------
    def run(
        self,
        expRefList: Sequence[Any],
        expDatasetType: str,
        imageScalerList: Sequence[ImageScaler] | None = None,
        refExpDataRef: Any = None,
        refImageScaler: ImageScaler | None = None,
    ) -> Struct:
        """Match every exposure of ``expRefList`` to a reference, in batched fits.

        Chooses the reference with `selectRefExposure` when ``refExpDataRef`` is
        None; otherwise it must be one of ``expRefList`` (identity, or equal path).
        Returns ``Struct(backgroundInfoList=[Struct(isReference, backgroundModel,
        fitRMS, matchedMSE, diffImVar), ...], refIndex, matchedExposureList)`` in
        input order; every entry that is the reference has ``isReference=True`` and
        None elsewhere, and so has a failed fit (logged, not raised).
        ``backgroundModel.getImage()`` returns the model image computed by the fit
        (no second evaluation). ``refIndex`` is the index of the reference in
        ``expRefList`` (jaxmatch); ``matchedExposureList[i]`` is exposure ``i``
        matched to the reference (scaled image + model, its own mask and variance),
        the (scaled) reference itself for the reference, None where the fit failed.
        The exposures are not modified.

        The science exposures are fitted `chunkSize` at a time at most (see there):
        the engine's working memory does not grow with the list's length; the
        results do not depend on it.

        Warnings name each exposure by its place in the list and what it carries:
        ``expRefList[3] (/data/v3.fits)``, ``expRefList[3] (dataId {'visit': 3})``,
        ``expRefList[3] (Exposure 2048x2048)``.

        Raises `ValueError` for an empty list, a scaler list of the wrong length or a
        reference not in the list, and `RuntimeError` naming a missing exposure (a
        bad `chunkSize` is refused when it is set).
        """
        self.staticConfig  # validate the config (FieldValidationError naming the field)
        chunkSize = self.chunkSize  # checked when set
        expRefList = list(expRefList)
        if not expRefList:
            raise ValueError("expRefList is empty: nothing to match")
        if imageScalerList is not None and len(imageScalerList) != len(expRefList):
            raise ValueError(
                f"imageScalerList has {len(imageScalerList)} entries, expRefList {len(expRefList)}"
            )
        with self.timer("run"):
            # Every exposure must exist (RuntimeError naming it); each is read once.
            scalers = imageScalerList or [None] * len(expRefList)
            loaded = [_load(r, expDatasetType) for r in expRefList]
            names = [describe_ref(i, r) for i, r in enumerate(expRefList)]
            if refExpDataRef is None:
                refIndex = self._referenceIndex([_scaled(e, s) for e, s in zip(loaded, scalers)])
                refExpDataRef = expRefList[refIndex]
                refImageScaler = scalers[refIndex]
            isRef = [_same_ref(r, refExpDataRef) for r in expRefList]
            if not any(isRef):
                raise ValueError(f"refExpDataRef {refExpDataRef!r} is not one of expRefList")
            refExposure = _scaled(loaded[isRef.index(True)], refImageScaler)
            infos: list[Struct] = [_info(r) for r in isRef]
            matchedList: list[Exposure | None] = [refExposure if r else None for r in isRef]
            batch, batchIndices = [], []
            for i in (i for i, r in enumerate(isRef) if not r):
                exposure = _scaled(loaded[i], scalers[i])
                problem = _incompatible(refExposure, exposure)
                if problem:
                    self._logFailure(names[i], problem)
                else:
                    batch.append(exposure)
                    batchIndices.append(i)
            if self.staticConfig.matchMode == "GLOBAL":
                self._fitGlobal(refExposure, batch, batchIndices, names, infos, matchedList)
            else:
                for groupIndices, group in _groups(batchIndices, batch):
                    self._fitBatch(
                        refExposure, group, groupIndices, names, infos, matchedList, chunkSize
                    )
            self.metadata["numExposures"] = len(expRefList)
            self.metadata["numFailed"] = sum(
                1 for s in infos if not s.isReference and s.backgroundModel is None
            )
        return Struct(
            backgroundInfoList=infos,
            refIndex=isRef.index(True),
            matchedExposureList=matchedList,
        )

    @property
    def chunkSize(self) -> int | None:
        """Science exposures per compiled call of `run` (jaxmatch; default 16, as
        ``jaxmatch match --chunk-size``); set it on the task: ``task.chunkSize = 8``.

        The engine's working memory (the stacked planes, binned grids and design
        matrices of one call) is then bounded whatever the length of ``expRefList``.
        The chunks are balanced (20 exposures: 2 calls of 10) and padded to one
        length with repeats of their first exposure (results dropped), so one
        compiled program serves them all. None: every exposure in one call. The
        results do not depend on it. What `run` returns (every matched image and
        model image) and the list it is given still grow with N. GLOBAL mode (one
        joint solve) ignores it.

        A task attribute rather than a `run` argument or a config field: `run` keeps
        LSST's signature, and the config is the compiled key (and the digest
        ``jaxmatch match --resume`` compares), which a memory setting must not change.
        """
        return self._state.extras.get("chunkSize", DEFAULT_CHUNK_SIZE)

    @chunkSize.setter
    def chunkSize(self, value: int | None) -> None:
        check_chunk_size(value, "chunkSize")
        self._state.extras["chunkSize"] = value

    def _logFailure(self, name: str, reason) -> None:
        self.log.warning("Failed to fit background %s: %s", name, reason)

    def _fitBatch(self, refExposure, group, indices, names, infos, matchedList, chunkSize):
        """Compiled calls of the engine for exposures with one shape and plane set
        (`match_list`: no stacked copy; model and matched images computed once), at
        most ``chunkSize`` exposures per call, every call padded to one length.

        Any exception fails the exposures of its call (logged, None fields), as an
        exception in one fit does in LSST's loop; the other calls go on.
        """
        size = chunk_length(len(group), chunkSize)
        for start in range(0, len(group), size):
            part = range(start, min(start + size, len(group)))
            try:
                fit = match_list(
                    refExposure,
                    [group[k] for k in part],
                    self.staticConfig,
                    roughness=self.splineRoughness,
                    pad_to=size,
                )
            except Exception as err:  # noqa: BLE001 - LSST logs a failed fit and goes on
                for k in part:
                    self._logFailure(names[indices[k]], f"{type(err).__name__}: {err}")
                continue
            for j, k in enumerate(part):
                i = indices[k]
                self._record(fit, j, names[i], infos, i)
                if infos[i].backgroundModel is not None:
                    matchedList[i] = _with_image(group[k], fit.matched[j])
            del fit  # the next call's buffers replace this one's

    def _record(self, fit, k, name, infos, i, **extra) -> None:
        """Entry ``i`` (described as ``name``) of the result list from exposure ``k`` of
        a `ListFit`."""
        status = int(fit.status[k])
        if status not in FITTED:
            self._logFailure(name, STATUS_MESSAGES[status])
            for name, value in extra.items():
                setattr(infos[i], name, value)
            return
        if status in (NAN_DIAGNOSTIC, ILL_CONDITIONED):
            self.log.warning("Background of %s: %s", name, STATUS_MESSAGES[status])
        infos[i] = Struct(
            isReference=False,
            backgroundModel=fit.models[k],
            fitRMS=float(fit.fitRMS[k]),
            matchedMSE=float(fit.matchedMSE[k]),
            diffImVar=float(fit.diffImVar[k]),
            **extra,
        )

    def _fitGlobal(self, refExposure, batch, indices, names, infos, matchedList):
        """GLOBAL mode: one joint solve over the reference and every other exposure.

        The reference is the gauge (its model is 0); each entry also gets ``group``,
        its connected-group label (-1: overlaps nothing).
        """
        members = [(refExposure, None)] + list(zip(batch, indices))
        groups = _groups([k for k in range(len(members))], [m[0] for m in members])
        if len(groups) > 1:  # different dtype or mask planes than the reference
            keep = set(groups[0][0])
            for k, (_, i) in enumerate(members):
                if k not in keep:
                    self._logFailure(names[i], "dtype or mask planes differ from the reference")
            members = [members[k] for k in sorted(keep)]
        try:
            result = match_all(
                stack_exposures([m[0] for m in members]),
                self.staticConfig,
                reference=0,
                roughness=self.splineRoughness,
                raise_on_failure=False,
            )
            result.status.block_until_ready()
        except Exception as err:  # noqa: BLE001 - logged like a failed fit
            for _, i in members[1:]:
                self._logFailure(names[i], f"{type(err).__name__}: {err}")
            return
        groups_ = np.asarray(result.group)
        if (note := group_summary(result)) is not None:  # batch indices: 0 = reference
            self.log.warning("%s", note)
        fit = _host_fit(result, [m[0] for m in members])
        for k, (exposure, i) in enumerate(members):
            if i is not None:
                linked = bool(result.matched_to_reference[k])
                extra = dict(group=int(groups_[k]), matchedToReference=linked)
                self._record(fit, k, names[i], infos, i, **extra)
                if infos[i].backgroundModel is not None:
                    matchedList[i] = _with_image(exposure, fit.matched[k])
        for info in infos:
            if info.isReference:
                info.group = int(groups_[0])

    def selectRefExposure(
        self,
        expRefList: Sequence[Any],
        imageScalerList: Sequence[ImageScaler] | None,
        expDatasetType: str,
    ) -> int:
        """Index of the best reference: the minimum of the LSST cost (Gen2: variance,
        level, coverage, weighted by ``refWeights``; with ``refSelection="GEN3"``, Gen3's
        plane-fit chi2, variance, coverage, weighted by ``refWeightsGen3``). Missing
        exposures are skipped with a warning; `RuntimeError` if none can be read.
        """
        expRefList = list(expRefList)
        if imageScalerList is not None and len(imageScalerList) != len(expRefList):
            raise ValueError(
                f"imageScalerList has {len(imageScalerList)} entries, expRefList {len(expRefList)}"
            )
        scalers = imageScalerList or [None] * len(expRefList)
        exposures = []
        for i, (ref, scaler) in enumerate(zip(expRefList, scalers)):
            try:
                exposures.append(_scaled(_load(ref, expDatasetType), scaler))
            except RuntimeError as err:
                name = describe_ref(i, ref)
                self.log.warning("Exposure %s not found; skipping it: %s", name, err)
                exposures.append(None)
        if all(e is None for e in exposures):
            raise RuntimeError("selectRefExposure: none of the exposures in expRefList was found")
        return self._referenceIndex(exposures)

    def _referenceIndex(self, exposures: list[Exposure | None]) -> int:
        """argmin of the cost over loaded (scaled) exposures; None entries are skipped."""
        stats = []
        for exposure in exposures:
            if exposure is None:
                stats.append((np.nan, np.nan, np.nan))
                continue
            stats.append(tuple(float(x) for x in _exposure_statistics(self, exposure)))
        costs = self._costs(*(jnp.asarray(col, dtype=float) for col in zip(*stats)))
        best = int(select_reference(costs))
        if best < 0:
            raise RuntimeError("selectRefExposure: no exposure has a usable pixel")
        self.metadata["refIndex"] = best
        return best

    def _statistics(self, exposure: Exposure):
        """The three statistics of one exposure for the configured cost (``refSelection``):
        GEN2 (variance, level, coverage), GEN3 (chi2, variance, coverage)."""
        config = self.staticConfig
        if config.refSelection == "GEN3":
            return gen3_reference_statistics(
                exposure.image,
                self._usable(exposure),
                config.binSize,
                config.numSigmaClip,
                config.numIter,
            )
        return reference_statistics(exposure.image, self._usable(exposure))

    def _costs(self, a, b, c) -> Float[Array, " N"]:
        if self.staticConfig.refSelection == "GEN3":
            return self.referenceCostsGen3(a, b, c)
        return self.referenceCosts(a, b, c)

    def matchBackgrounds(self, refExposure: Exposure, sciExposure: Exposure) -> Struct:
        """Match one science exposure to the reference (LSST's method).

        Returns ``Struct(backgroundModel, fitRMS, matchedMSE, diffImVar)``. As in
        LSST, ``sciExposure`` is modified: its image becomes the matched image
        (science + model). This happens only after a successful fit; on failure
        `ValueError` is raised and the exposure is left as it was. (This is the
        only place jaxmatch changes an input; everything else is functional.)
        Shapes that differ raise `RuntimeError` naming both, as LSST does.
        """
        problem = _incompatible(refExposure, sciExposure)
        if problem:
            raise RuntimeError(problem)
        with self.timer("matchBackgrounds"):
            config = self.staticConfig
            result = match(refExposure, sciExposure, config, roughness=self.splineRoughness)
        # LSST's in-place update; the image keeps its pixel type (the engine may work in
        # another dtype), so image and variance stay of one dtype, as Exposure requires.
        matched = result.matched[0].astype(sciExposure.image.dtype)
        object.__setattr__(sciExposure, "image", matched)
        return Struct(
            backgroundModel=result.model[0],
            fitRMS=float(result.fitRMS[0]),
            matchedMSE=float(result.matchedMSE[0]),
            diffImVar=float(result.diffImVar[0]),
        )

    def tune(self, exposures, **kwargs) -> Struct:
        """Choose binSize, order, λ and the clip threshold by held-out loss
        (`jaxmatch.autotune`, keywords passed on, e.g. ``budget_s``). Returns
        ``Struct(task, config, tuning)``: a new task with the chosen config, the
        config, and the `AutotuneResult` (loss of every candidate, time)."""
        from ._autotune import autotune

        tuning = autotune(exposures, self.config, **kwargs)
        return Struct(task=type(self)(tuning.config), config=tuning.config, tuning=tuning)

    # -- differentiable reference selection ------------------------------------------
    def referenceCostsGen3(self, chi2, variance, coverage) -> Float[Array, " N"]:
        """LSST Gen3's reference cost with this task's ``refWeightsGen3``."""
        w_chi2, w_var, w_cov = self.refWeightsGen3
        return gen3_reference_costs(
            chi2,
            variance,
            coverage,
            weight_chi2=w_chi2,
            weight_variance=w_var,
            weight_coverage=w_cov,
        )

    def referenceCosts(self, variance, level, coverage) -> Float[Array, " N"]:
        """LSST's (Gen2) reference cost of each exposure with this task's ``refWeights``."""
        w_cov, w_var, w_level = self.refWeights
        return reference_costs(
            variance,
            level,
            coverage,
            weight_coverage=w_cov,
            weight_variance=w_var,
            weight_level=w_level,
        )

    def softReferenceWeights(self, exposures: Exposure) -> Float[Array, " N"]:
        """Soft-min weights ``softmax(-cost / T)`` over a batch ``(N, H, W)``.

        The cost is the configured one (``refSelection``: GEN2 or GEN3).
        Differentiable in the images, the cost's weights (``refWeights`` or
        ``refWeightsGen3``) and ``softminTemperature``;
        tends to the one-hot `selectRefExposure` choice as ``T → 0``.
        """
        stats = jax.vmap(self._statistics)(exposures)
        return softmin_weights(self._costs(*stats), self.softminTemperature)

    def softReference(self, exposures: Exposure) -> Exposure:
        """The soft reference exposure ``Σ_i w_i x_i`` of a batch (differentiable).

        Its variance is ``Σ_i w_i² var_i``; its mask is the OR of the masks of the
        exposures with a non-zero weight (`soft_reference_exposure`).
        """
        return soft_reference_exposure(exposures, self.softReferenceWeights(exposures))

    def _usable(self, exposure: Exposure):
        bits = exposure.bitmask(self.staticConfig.badMaskPlanes)
        return usable_mask(exposure.image, (exposure.mask, bits))


# -- helpers ----------------------------------------------------------------------------
# One compiled program per (config, shape), shared by equal tasks (value-keyed statics).
_exposure_statistics = eqx.filter_jit(lambda task, exposure: task._statistics(exposure))

_LEAF_FIELDS = {
    "refWeights": ("bestRefWeightCoverage", "bestRefWeightVariance", "bestRefWeightLevel"),
    "refWeightsGen3": ("bestRefWeightChi2", "bestRefWeightVariance", "bestRefWeightGlobalCoverage"),
    "softminTemperature": ("softminTemperature",),
    "splineRoughness": ("splineRoughness",),
}


def _leaves(cfg) -> dict[str, Array]:
    """The task's array leaves from a (frozen or mutable) config's values."""
    return {
        name: jnp.asarray(
            [getattr(cfg, f) for f in fields] if len(fields) > 1 else getattr(cfg, fields[0]),
            dtype=float,
        )
        for name, fields in _LEAF_FIELDS.items()
    }


def _info(isReference: bool) -> Struct:
    return Struct(
        isReference=isReference, backgroundModel=None, fitRMS=None, matchedMSE=None, diffImVar=None
    )


def _with_image(exposure: Exposure, image) -> Exposure:
    """``exposure`` with another image plane (mask and variance shared, not copied)."""
    return Exposure(
        image.astype(exposure.image.dtype),
        exposure.mask,
        exposure.variance,
        mask_planes=exposure.getMaskPlaneDict(),
    )


def _host_fit(result, exposures) -> ListFit:
    """A `ListFit` view of an engine result (`MatchResult` / `GlobalResult`)."""
    n = len(exposures)
    models = [result.model[k] for k in range(n)]
    matched = [batch_item(result.matched, k) for k in range(n)]
    host = jax.device_get((result.status, result.fitRMS, result.matchedMSE, result.diffImVar))
    return ListFit(models, matched, *(np.asarray(a) for a in host))


def _load(ref: Any, datasetType: str) -> Exposure:
    """Resolve a data reference to an `Exposure`; `RuntimeError` naming it if missing."""
    if isinstance(ref, Exposure):
        return ref
    if isinstance(ref, (str, os.PathLike)):
        from .io import readExposure

        try:
            return readExposure(ref)
        except (FileNotFoundError, ValueError) as err:
            raise RuntimeError(f"Exposure {os.fspath(ref)} does not exist or cannot be read: {err}")
    if hasattr(ref, "get"):
        exists = getattr(ref, "datasetExists", None)
        if exists is not None and not exists(datasetType):
            raise RuntimeError(f"Dataset {datasetType} for {ref!r} does not exist")
        try:
            exposure = ref.get(datasetType)
        except Exception as err:  # a store's own error becomes LSST's RuntimeError
            raise RuntimeError(f"Dataset {datasetType} for {ref!r} could not be read: {err}")
        return _load(exposure, datasetType)
    raise TypeError(
        f"cannot use {type(ref).__name__} as an exposure reference: give an Exposure, "
        "a FITS path, or an object with get(datasetType)"
    )


def _scaled(exposure: Exposure, scaler: ImageScaler | None) -> Exposure:
    return exposure if scaler is None else scaler.scaleExposure(exposure)


def _same_ref(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, (str, os.PathLike)) and isinstance(b, (str, os.PathLike)):
        return os.path.realpath(a) == os.path.realpath(b)
    return False


def describe_ref(index: int, ref: Any) -> str:
    """How warnings name entry ``index`` of ``expRefList``: its place in the list and,
    when it carries one, its file or data ID.

    ``expRefList[2] (/data/v2.fits)`` for a path; ``expRefList[2] (dataId {...})``
    for a Butler-like reference with a ``dataId``; ``expRefList[2] (Exposure
    64x64)`` for an in-memory exposure (which carries no name); otherwise the
    reference's ``repr``.
    """
    place = f"expRefList[{index}]"
    if isinstance(ref, (str, os.PathLike)):
        return f"{place} ({os.fspath(ref)})"
    if isinstance(ref, Exposure):
        shape = "x".join(str(n) for n in ref.image.shape)
        return f"{place} (Exposure {shape})"
    data_id = getattr(ref, "dataId", None)
    if data_id is not None:
        return f"{place} (dataId {_plain(data_id)})"
    for attribute in ("filename", "path"):
        name = getattr(ref, attribute, None)
        if isinstance(name, (str, os.PathLike)):
            return f"{place} ({os.fspath(name)})"
    return f"{place} ({ref!r})"


def _plain(data_id: Any) -> str:
    """A data ID as ``{'visit': 3, ...}`` (Butler DataCoordinates print verbosely)."""
    try:
        return repr(dict(data_id))
    except (TypeError, ValueError):
        return repr(data_id)


def _incompatible(ref: Exposure, sci: Exposure) -> str | None:
    if ref.image.shape != sci.image.shape:
        return (
            f"Exposures are different dimensions. sci:{tuple(sci.image.shape)} "
            f"ref:{tuple(ref.image.shape)}"
        )
    return None


def _groups(indices, exposures):
    """Split exposures into groups of equal dtype and mask planes (one batch each)."""
    groups: dict[Any, tuple[list[int], list[Exposure]]] = {}
    for i, exp in zip(indices, exposures):
        key = (exp.image.dtype, exp.mask_planes)
        groups.setdefault(key, ([], []))
        groups[key][0].append(i)
        groups[key][1].append(exp)
    return list(groups.values())


logging.getLogger(__name__).addHandler(logging.NullHandler())
