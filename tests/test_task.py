"""Tests of jaxmatch._task: `MatchBackgroundsTask`, the LSST task interface.

What is shown, in the order of the issue "The task":

1. every method of the LSST API page (the seed) exists with its name and
   signature, and the task works as a subtask (names, metadata keys);
2. `selectRefExposure` agrees with a plain-NumPy computation of the cost, each of
   the three terms deciding in turn; missing exposures are skipped with a warning;
3. `run` on mixed data references equals `matchBackgrounds` pair by pair, marks
   the reference(s), turns a failed fit into None fields, honours an explicit
   reference, raises on missing exposures, and applies image scalers;
4. the soft-min is one-hot at a tiny temperature, its gradients with respect to
   the task's float leaves agree with finite differences, and `eqx.filter_jit`
   does not retrace when only those leaves change.

All data are 64 x 64 with binSize 16 (4 x 4 cells, so the default AKIMA spline
falls back to NATURAL_SPLINE), and nearly every test uses the one config `CFG`
and a science batch of 3, so the engine compiles only a few times.
"""

import dataclasses
import inspect
import logging
import pathlib
import typing

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import TOL

from jaxmatch import (
    DEFAULT_MASK_PLANES,
    ConfigurableField,
    Exposure,
    ImageScaler,
    MatchBackgroundsConfig,
    MatchBackgroundsTask,
    Struct,
    Task,
    io,
    match,
    simulate_patch,
    stack_exposures,
)

DATASET = "deepCoadd_tempExp"
CFG = MatchBackgroundsConfig(binSize=16)
FIELDS = ("fitRMS", "matchedMSE", "diffImVar")
DETECTED = 1 << DEFAULT_MASK_PLANES["DETECTED"]
NO_DATA = 1 << DEFAULT_MASK_PLANES["NO_DATA"]

# Tolerances, one table, each with its reason (float64 throughout, conftest).


# ------------------------------------------------------------------------- data
def _exposures_of(patch):
    return [
        Exposure(patch.images[i], patch.masks[i], patch.variances[i], mask_planes=patch.mask_planes)
        for i in range(len(patch.images))
    ]


@pytest.fixture(scope="module")
def patch_exposures():
    """Four simulated 64 x 64 exposures (partial coverage: NaN + NO_DATA regions)."""
    return _exposures_of(simulate_patch(4, shape=(64, 64), seed=3))


def _hand_exposure(level, sigma, n_missing_rows, rng):
    """Flat sky `level` + N(0, sigma²) noise, a masked bright blob, missing rows."""
    image = level + sigma * rng.standard_normal((64, 64))
    mask = np.zeros((64, 64), np.int32)
    # a masked source: its huge values must stay out of every statistic
    image[10:14, 10:14] += 1e4
    mask[10:14, 10:14] |= DETECTED
    # missing coverage: NaN and NO_DATA, as a warp leaves it
    image[:n_missing_rows] = np.nan
    mask[:n_missing_rows] = NO_DATA
    return Exposure(image, mask, np.full((64, 64), sigma**2))


@pytest.fixture(scope="module")
def hand():
    """Three exposures, each best in one term of the reference cost:

    0: lowest variance (σ = 1), level 100, coverage 3056 pixels;
    1: lowest level (50), σ = 3, coverage 3056;
    2: most coverage (4080 pixels), σ = 3, level 100.
    """
    rng = np.random.default_rng(7)
    return [
        _hand_exposure(100.0, 1.0, 16, rng),
        _hand_exposure(50.0, 3.0, 16, rng),
        _hand_exposure(100.0, 3.0, 0, rng),
    ]


def _leaf(value):
    """A float64 array leaf like the task's own. (`jnp.asarray(0.1)` alone would be
    weakly typed, a different abstract type, and `filter_jit` would retrace.)"""
    return jnp.asarray(value, dtype=float)


def _copy(exposure):
    """A new Exposure object on the same (immutable) arrays."""
    return Exposure(
        exposure.image, exposure.mask, exposure.variance, mask_planes=exposure.getMaskPlaneDict()
    )


class GetOnly:
    """The minimal data reference: just `get(datasetType)`."""

    def __init__(self, exposure, name):
        self.exposure, self.name, self.requested = exposure, name, []

    def get(self, datasetType):
        self.requested.append(datasetType)
        if datasetType != DATASET:
            raise KeyError(datasetType)
        return self.exposure

    def __repr__(self):
        return f"<ref {self.name}>"


class Store(GetOnly):
    """A Butler-like reference that can also say whether its dataset exists."""

    def __init__(self, exposure, name, exists=True):
        super().__init__(exposure, name)
        self.exists = exists

    def datasetExists(self, datasetType):
        return self.exists and datasetType == DATASET


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _ref_flags(result):
    return [info.isReference for info in result.backgroundInfoList]


def _assert_same_fit(a, b):
    """Two successful fit Structs give the same diagnostics and model image."""
    assert a.backgroundModel is not None and b.backgroundModel is not None
    for name in FIELDS:
        np.testing.assert_allclose(
            getattr(a, name), getattr(b, name), **TOL["float64", "batched-vs-single"]
        )
    np.testing.assert_allclose(
        a.backgroundModel.getImage(), b.backgroundModel.getImage(), **TOL["float64", "model-image"]
    )


def _assert_same_run(a, b):
    assert _ref_flags(a) == _ref_flags(b)
    for x, y in zip(a.backgroundInfoList, b.backgroundInfoList):
        if x.isReference:
            continue
        _assert_same_fit(x, y)


# ---------------------------------------------------- 1. the seed's methods
_P = inspect.Parameter
_EMPTY = _P.empty
SEED_SIGNATURES = {
    # name: [(parameter, default)] after `self`; "**" marks a **keyArgs parameter
    "run": [
        ("expRefList", _EMPTY),
        ("expDatasetType", _EMPTY),
        ("imageScalerList", None),
        ("refExpDataRef", None),
        ("refImageScaler", None),
    ],
    "selectRefExposure": [
        ("expRefList", _EMPTY),
        ("imageScalerList", _EMPTY),
        ("expDatasetType", _EMPTY),
    ],
    "matchBackgrounds": [("refExposure", _EMPTY), ("sciExposure", _EMPTY)],
    "timer": [("name", _EMPTY), ("logLevel", 10)],
    "makeSubtask": [("name", _EMPTY), ("**keyArgs", _EMPTY)],
    "getName": [],
    "getFullName": [],
    "getTaskDict": [],
    "getFullMetadata": [],
    "emptyMetadata": [],
    "getSchemaCatalogs": [],
    "getAllSchemaCatalogs": [],
}


def _described(sig):
    out = []
    for p in sig.parameters.values():
        if p.kind is _P.VAR_KEYWORD:
            out.append(("**" + p.name, p.default))
        else:
            assert p.kind is _P.POSITIONAL_OR_KEYWORD, p
            out.append((p.name, p.default))
    return out


@pytest.mark.parametrize("name", sorted(SEED_SIGNATURES))
def test_seed_method_signature(name):
    method = getattr(MatchBackgroundsTask, name)
    assert callable(method)
    params = _described(inspect.signature(method))
    assert params[0] == ("self", _EMPTY)
    assert params[1:] == SEED_SIGNATURES[name]


def test_seed_makeField_is_a_classmethod_returning_a_field():
    assert isinstance(inspect.getattr_static(MatchBackgroundsTask, "makeField"), classmethod)
    assert _described(inspect.signature(MatchBackgroundsTask.makeField)) == [("doc", _EMPTY)]
    field = MatchBackgroundsTask.makeField("match the backgrounds")
    assert isinstance(field, ConfigurableField)
    assert field.target is MatchBackgroundsTask and field.doc == "match the backgrounds"
    assert field.value == MatchBackgroundsConfig()


@pytest.mark.parametrize("cls", [MatchBackgroundsTask, ImageScaler])
def test_field_annotations_resolve(cls):
    # jaxtyping needs its shape as a string: `Float[Array, 3]` (what ruff's UP037 fix
    # makes of `"3"`) raises once the annotations are evaluated, e.g. by a type checker
    hints = typing.get_type_hints(cls)
    assert hints


def test_top_level_task_names_and_timer(caplog):
    task = MatchBackgroundsTask()
    assert isinstance(task, Task) and task.config == MatchBackgroundsConfig()
    assert task.getName() == task.getFullName() == "matchBackgrounds"  # LSST's _DefaultName
    assert task.getSchemaCatalogs() == {} and task.getAllSchemaCatalogs() == {}
    assert set(task.getTaskDict()) == {"matchBackgrounds"}
    caplog.set_level(logging.INFO)
    with task.timer("block", logLevel=logging.INFO):
        pass
    assert {"blockStartUtc", "blockEndUtc", "blockDuration"} <= set(task.metadata)
    assert any(r.levelno == logging.INFO and "block" in r.getMessage() for r in caplog.records)


@dataclasses.dataclass(frozen=True)
class ParentConfig:
    matcher: ConfigurableField = MatchBackgroundsTask.makeField("background matching")


class ParentTask(Task):
    ConfigClass = ParentConfig
    _DefaultName = "parent"

    def __init__(self, config=None, **keyArgs):
        super().__init__(config, **keyArgs)
        self.makeSubtask("matcher")


def test_as_subtask_names_and_metadata(patch_exposures):
    # the class default is LSST's default config
    assert ParentConfig().matcher.target is MatchBackgroundsTask
    assert ParentConfig().matcher.value == MatchBackgroundsConfig()
    # a field of its own, holding the small test config (one compile for the file)
    field = MatchBackgroundsTask.makeField("background matching")
    field.value = CFG
    parent = ParentTask(ParentConfig(matcher=field))
    sub = parent.matcher
    assert isinstance(sub, MatchBackgroundsTask) and sub.config is CFG
    assert sub.getName() == "matcher" and sub.getFullName() == "parent.matcher"
    assert sub.log.name == "parent.matcher"
    tasks = sub.getTaskDict()
    assert set(tasks) == {"parent", "parent.matcher"}
    assert tasks["parent"]() is parent and tasks["parent.matcher"]() is sub

    result = sub.run(patch_exposures, DATASET)
    assert len(result.backgroundInfoList) == 4
    full = parent.getFullMetadata()
    for item in ("runStartUtc", "runEndUtc", "runDuration", "numExposures", "refIndex"):
        assert f"parent:matcher.{item}" in full, item
    assert full["parent:matcher.numExposures"] == 4
    assert full["parent:matcher.runDuration"] > 0
    assert sub.getFullMetadata() == full  # the same answer from anywhere in the tree
    assert parent.getAllSchemaCatalogs() == {}
    sub.emptyMetadata()
    assert parent.getFullMetadata() == {}


# ------------------------------------------------------ 2. selectRefExposure
def _np_statistics(exposure, bad_planes):
    bits = 0
    for plane in bad_planes:
        bits |= 1 << DEFAULT_MASK_PLANES[plane]
    image = np.asarray(exposure.image)
    good = ((np.asarray(exposure.mask) & bits) == 0) & np.isfinite(image)
    values = image[good]
    return values.var(ddof=1), values.mean(), float(values.size)


def _np_costs(stats, w_cov, w_var, w_level, *, lsst_level=False):
    """The spec's cost; the level term over max |level| (jaxmatch's documented
    deviation) unless `lsst_level`, which divides by LSST's nanmax(level)."""
    var, level, cov = (np.asarray(c, dtype=float) for c in zip(*stats))
    level_norm = np.nanmax(level) if lsst_level else np.nanmax(np.abs(level))
    return (
        w_var * var / np.nanmax(var) + w_level * level / level_norm + w_cov * np.nanmin(cov) / cov
    )


# (bestRefWeightCoverage, bestRefWeightVariance, bestRefWeightLevel), expected index
WEIGHT_CASES = {
    "variance": ((0.1, 1.0, 0.1), 0),
    "level": ((0.1, 0.1, 1.0), 1),
    "coverage": ((1.0, 0.1, 0.1), 2),
    "LSST defaults": ((0.4, 0.4, 0.2), 0),
}


def _weighted_config(weights):
    w_cov, w_var, w_level = weights
    return CFG.replace(
        bestRefWeightCoverage=w_cov, bestRefWeightVariance=w_var, bestRefWeightLevel=w_level
    )


@pytest.mark.parametrize("case", sorted(WEIGHT_CASES))
def test_selectRefExposure_matches_numpy_cost(hand, case):
    weights, expected = WEIGHT_CASES[case]
    task = MatchBackgroundsTask(_weighted_config(weights))
    stats = [_np_statistics(e, CFG.badMaskPlanes) for e in hand]
    np_costs = _np_costs(stats, *weights)
    # the construction does what its docstring says: this term decides
    assert int(np.argmin(np_costs)) == expected
    assert np.sort(np_costs)[1] - np_costs.min() > 0.05
    # the task's cost (config weights → refWeights, in its order) on the same statistics
    np.testing.assert_allclose(
        task.referenceCosts(*map(np.asarray, zip(*stats))), np_costs, **TOL["float64", "cost"]
    )
    assert task.selectRefExposure(hand, None, DATASET) == expected
    assert task.metadata["refIndex"] == expected


def test_selectRefExposure_negative_levels_prefer_the_lowest(hand):
    """jaxmatch's documented deviation: level / max|level|, so the most negative
    level wins; LSST's level / nanmax(level) would pick another exposure here."""
    shifted = [Exposure(e.image - 200.0, e.mask, e.variance) for e in hand]  # -100, -150, -100
    weights, _ = WEIGHT_CASES["level"]
    stats = [_np_statistics(e, CFG.badMaskPlanes) for e in shifted]
    assert int(np.argmin(_np_costs(stats, *weights))) == 1
    assert int(np.argmin(_np_costs(stats, *weights, lsst_level=True))) != 1
    task = MatchBackgroundsTask(_weighted_config(weights))
    assert task.selectRefExposure(shifted, None, DATASET) == 1


def test_selectRefExposure_applies_image_scalers(hand):
    weights, _ = WEIGHT_CASES["variance"]
    task = MatchBackgroundsTask(_weighted_config(weights))
    scalers = [ImageScaler(4.0), ImageScaler(1.0), ImageScaler(1.0)]
    scaled = [s.scaleExposure(e) for s, e in zip(scalers, hand)]
    np_costs = _np_costs([_np_statistics(e, CFG.badMaskPlanes) for e in scaled], *weights)
    best = int(np.argmin(np_costs))
    assert best != 0  # scaling exposure 0 by 4 costs it its low-variance win
    assert task.selectRefExposure(hand, scalers, DATASET) == best


def test_selectRefExposure_skips_missing_with_warning(hand, tmp_path, caplog):
    weights, _ = WEIGHT_CASES["variance"]
    task = MatchBackgroundsTask(_weighted_config(weights))
    absent = Store(hand[0], "absent-store", exists=False)
    no_file = str(tmp_path / "no-such-exposure.fits")
    refs = [absent, no_file, *hand]
    # indices refer to the original list: the winner, hand[0], is entry 2
    assert task.selectRefExposure(refs, None, DATASET) == 2
    messages = _warnings(caplog)
    assert len(messages) == 2
    assert any("absent-store" in m for m in messages)
    assert any("no-such-exposure.fits" in m for m in messages)
    with pytest.raises(RuntimeError):
        task.selectRefExposure([absent, no_file], None, DATASET)


# ------------------------------------------------------------------- 3. run
def test_run_on_mixed_references_equals_pairwise_matching(patch_exposures, tmp_path):
    exps = patch_exposures
    path = tmp_path / "exposure1.fits"
    io.writeExposure(exps[1], path)
    getter = GetOnly(exps[2], "exposure2")
    refs = [exps[0], str(path), getter, exps[3]]
    task = MatchBackgroundsTask(CFG)
    images_before = [e.image for e in exps]

    result = task.run(refs, DATASET)

    assert isinstance(result, Struct)
    infos = result.backgroundInfoList
    assert len(infos) == len(refs)
    assert sum(_ref_flags(result)) == 1
    ref_index = _ref_flags(result).index(True)
    assert ref_index == task.selectRefExposure(refs, None, DATASET)
    assert set(getter.requested) == {DATASET}
    assert all(e.image is before for e, before in zip(exps, images_before))  # inputs untouched
    assert task.metadata["numExposures"] == 4 and task.metadata["numFailed"] == 0

    ref_exposure = exps[ref_index]  # the FITS round trip of float64 planes is exact
    for i, info in enumerate(infos):
        assert set(info.getDict()) == {"isReference", "backgroundModel", *FIELDS}
        if i == ref_index:
            assert all(getattr(info, name) is None for name in ("backgroundModel", *FIELDS))
            continue
        assert all(isinstance(getattr(info, name), float) for name in FIELDS)
        sci = _copy(exps[i])
        single = task.matchBackgrounds(ref_exposure, sci)
        _assert_same_fit(info, single)
        model = np.asarray(single.backgroundModel.getImage())
        assert np.ptp(model) > 1.0  # a real correction (backgrounds differ by ~20 ADU)
        # matchBackgrounds modified the science image in place: sci + model
        np.testing.assert_allclose(
            sci.image,
            np.asarray(exps[i].image) + model,
            equal_nan=True,
            **TOL["float64", "matched-image"],
        )
        # a good match: the residual MSE is comparable to the difference's variance
        # (spec §8), here within 20 % (the simulated noise is Gaussian)
        assert 0.8 < single.matchedMSE / single.diffImVar < 1.2


def test_matchBackgrounds_failure_leaves_science_unchanged(patch_exposures):
    ref, sci = patch_exposures[0], _copy(patch_exposures[1])
    dead = Exposure(sci.image, jnp.full(sci.mask.shape, NO_DATA, jnp.int32), sci.variance)
    before = dead.image
    task = MatchBackgroundsTask(CFG)
    with pytest.raises(ValueError, match="no overlap"):
        task.matchBackgrounds(ref, dead)
    assert dead.image is before
    small = Exposure(np.zeros((32, 32)), None, np.ones((32, 32)))
    with pytest.raises(RuntimeError, match=r"\(32, 32\).*\(64, 64\)"):
        task.matchBackgrounds(ref, small)


def test_matchBackgrounds_keeps_the_science_pixel_type(patch_exposures):
    """A float32 science exposure matched to a float64 reference (the engine works in
    float64) keeps a float32 image, of one dtype with its variance."""
    ref, sci64 = patch_exposures[0], patch_exposures[1]
    sci32 = Exposure(
        np.asarray(sci64.image, np.float32), sci64.mask, np.asarray(sci64.variance, np.float32)
    )
    single = MatchBackgroundsTask(CFG).matchBackgrounds(ref, sci32)
    assert sci32.image.dtype == sci32.variance.dtype == np.float32
    expected = np.asarray(sci64.image, np.float32).astype(float) + np.asarray(
        single.backgroundModel.getImage()
    )
    # one float32 rounding of values ~1e3: relative 2**-24 ≈ 6e-8
    np.testing.assert_allclose(sci32.image, expected, rtol=1e-7, equal_nan=True)


def test_run_failed_fit_gives_none_and_warning(patch_exposures, caplog):
    exps = patch_exposures
    dead = Exposure(exps[2].image, np.full((64, 64), NO_DATA, np.int32), exps[2].variance)
    task = MatchBackgroundsTask(CFG)
    result = task.run([exps[0], exps[1], dead, exps[3]], DATASET)
    infos = result.backgroundInfoList
    assert sum(_ref_flags(result)) == 1 and not infos[2].isReference
    assert all(getattr(infos[2], name) is None for name in ("backgroundModel", *FIELDS))
    assert any("Failed to fit background" in m for m in _warnings(caplog))
    for info in infos:
        if not info.isReference and info is not infos[2]:
            assert info.backgroundModel is not None  # one failure does not sink the batch
    assert task.metadata["numFailed"] == 1


def test_run_honours_an_explicit_reference(patch_exposures, tmp_path):
    exps = patch_exposures
    task = MatchBackgroundsTask(CFG)
    auto = task.selectRefExposure(exps, None, DATASET)
    chosen = (auto + 1) % 4  # not the one it would pick
    path = tmp_path / "chosen.fits"
    io.writeExposure(exps[chosen], path)
    refs = list(exps)
    refs[chosen] = str(path)
    # an equal path of another type still names the same entry
    result = task.run(refs, DATASET, refExpDataRef=pathlib.Path(path))
    assert _ref_flags(result) == [i == chosen for i in range(4)]
    other = (chosen + 1) % 4
    single = task.matchBackgrounds(exps[chosen], _copy(exps[other]))
    _assert_same_fit(result.backgroundInfoList[other], single)

    with pytest.raises(ValueError, match="not one of expRefList"):
        task.run(exps[:3], DATASET, refExpDataRef=exps[3])
    with pytest.raises(ValueError):
        task.run([], DATASET)


def test_run_reference_listed_twice(patch_exposures):
    exps = patch_exposures
    task = MatchBackgroundsTask(CFG)
    # explicit reference
    result = task.run([exps[0], exps[1], exps[0], exps[2], exps[3]], DATASET, refExpDataRef=exps[0])
    assert _ref_flags(result) == [True, False, True, False, False]
    for i in (0, 2):
        info = result.backgroundInfoList[i]
        assert all(getattr(info, name) is None for name in ("backgroundModel", *FIELDS))
    # automatic reference
    auto = task.selectRefExposure(exps, None, DATASET)
    refs = [*exps, exps[auto]]
    assert _ref_flags(task.run(refs, DATASET)) == [i == auto for i in range(4)] + [True]


def test_run_missing_exposure_raises_naming_it(patch_exposures, tmp_path, caplog):
    exps = patch_exposures
    task = MatchBackgroundsTask(CFG)
    absent = Store(exps[2], "absent-exposure", exists=False)
    with pytest.raises(RuntimeError, match="absent-exposure"):
        task.run([exps[0], exps[1], absent, exps[3]], DATASET)
    no_file = str(tmp_path / "vanished.fits")
    with pytest.raises(RuntimeError, match="vanished.fits"):
        task.run([exps[0], no_file, exps[2], exps[3]], DATASET, refExpDataRef=exps[0])
    with pytest.raises(RuntimeError, match="vanished.fits"):  # as the reference, too
        task.run([exps[0], no_file], DATASET, refExpDataRef=no_file)


def test_image_scaler_scales_image_by_s_and_variance_by_s2(patch_exposures):
    exp = patch_exposures[0]
    scaled = ImageScaler(1.7).scaleExposure(exp)
    np.testing.assert_allclose(scaled.image, 1.7 * np.asarray(exp.image), rtol=1e-15)
    np.testing.assert_allclose(scaled.variance, 1.7**2 * np.asarray(exp.variance), rtol=1e-15)
    np.testing.assert_array_equal(scaled.mask, exp.mask)
    assert scaled.mask_planes == exp.mask_planes
    assert scaled is not exp and np.array_equal(exp.image, patch_exposures[0].image)
    field = np.linspace(0.5, 1.5, 64 * 64).reshape(64, 64)  # a spatially varying scale
    scaled = ImageScaler(field).scaleExposure(exp)
    np.testing.assert_allclose(scaled.image, field * np.asarray(exp.image), rtol=1e-15)
    np.testing.assert_allclose(scaled.variance, field**2 * np.asarray(exp.variance), rtol=1e-15)
    with pytest.raises(ValueError):
        ImageScaler(np.ones((32, 32))).scaleExposure(exp)


def test_run_with_scalers_equals_run_on_prescaled(patch_exposures):
    exps = patch_exposures
    task = MatchBackgroundsTask(CFG)
    scalers = [ImageScaler(s) for s in (1.0, 1.3, 0.8, 1.1)]
    pre = [s.scaleExposure(e) for s, e in zip(scalers, exps)]
    with_scalers = task.run(exps, DATASET, imageScalerList=scalers)
    _assert_same_run(with_scalers, task.run(pre, DATASET))
    # the scalers matter: unscaled input gives other numbers
    plain = task.run(exps, DATASET)
    k = next(
        i
        for i, (a, b) in enumerate(zip(_ref_flags(plain), _ref_flags(with_scalers)))
        if not (a or b)
    )
    assert (
        abs(plain.backgroundInfoList[k].diffImVar - with_scalers.backgroundInfoList[k].diffImVar)
        > 1.0
    )
    # an explicit reference is scaled by refImageScaler ...
    _assert_same_run(
        task.run(
            exps, DATASET, imageScalerList=scalers, refExpDataRef=exps[1], refImageScaler=scalers[1]
        ),
        task.run(pre, DATASET, refExpDataRef=pre[1]),
    )
    # ... and not at all when refImageScaler is None (LSST's rule)
    mixed = [pre[0], exps[1], pre[2], pre[3]]
    _assert_same_run(
        task.run(exps, DATASET, imageScalerList=scalers, refExpDataRef=exps[1]),
        task.run(mixed, DATASET, refExpDataRef=exps[1]),
    )
    with pytest.raises(ValueError):
        task.run(exps, DATASET, imageScalerList=scalers[:3])


# ------------------------------------------------------------- 4. soft-min
_soft_weights = eqx.filter_jit(lambda task, batch: task.softReferenceWeights(batch))


def test_soft_weights_are_one_hot_at_tiny_temperature(hand):
    batch = stack_exposures(hand)
    cold = eqx.tree_at(lambda t: t.softminTemperature, MatchBackgroundsTask(CFG), _leaf(1e-4))
    chosen = set()
    for weights, expected in WEIGHT_CASES.values():
        task = eqx.tree_at(lambda t: t.refWeights, cold, _leaf(weights))
        best = task.selectRefExposure(hand, None, DATASET)
        assert best == expected
        np.testing.assert_allclose(
            _soft_weights(task, batch), np.eye(3)[best], **TOL["float64", "one-hot"]
        )
        chosen.add(best)
    assert chosen == {0, 1, 2}
    # at the default temperature (0.05) the weights are soft
    warm = _soft_weights(MatchBackgroundsTask(CFG), batch)
    assert float(jnp.max(warm)) < 1 - 1e-6
    np.testing.assert_allclose(jnp.sum(warm), 1.0, rtol=1e-14)


FLOAT_LEAVES = {
    "refWeights": lambda t: t.refWeights,
    "softminTemperature": lambda t: t.softminTemperature,
    "splineRoughness": lambda t: t.splineRoughness,
}


def test_gradients_wrt_task_leaves_match_finite_differences():
    batch = stack_exposures(
        _exposures_of(simulate_patch(3, shape=(64, 64), seed=3, coverage="full"))
    )
    task = eqx.tree_at(
        lambda t: (t.softminTemperature, t.splineRoughness),
        MatchBackgroundsTask(CFG),
        (_leaf(0.1), _leaf(0.5)),
    )

    @eqx.filter_jit
    def loss(task, batch):
        # every float leaf matters: the weights and T through the soft-min, the
        # roughness through a spline fit to the soft reference
        weights = task.softReferenceWeights(batch)
        ref = task.softReference(batch)
        fit = match(ref, batch, task.config, roughness=task.splineRoughness, raise_on_failure=False)
        return jnp.sum(weights * jnp.arange(3.0)) + jnp.mean(fit.matchedMSE) / 1000.0

    grads = eqx.filter_jit(eqx.filter_grad(loss))(task, batch)
    h = TOL["float64", "fd-grad-loss"]["step"]
    for name, get in FLOAT_LEAVES.items():
        value = get(task)
        analytic = np.atleast_1d(np.asarray(get(grads)))
        numeric = []
        for k in range(value.size):
            step = jnp.zeros(value.size).at[k].set(h).reshape(value.shape)
            up = loss(eqx.tree_at(get, task, value + step), batch)
            down = loss(eqx.tree_at(get, task, value - step), batch)
            numeric.append(float(up - down) / (2 * h))
        assert np.all(np.abs(analytic) > 1e-4), (name, analytic)  # not a vacuous check
        np.testing.assert_allclose(
            analytic,
            numeric,
            rtol=TOL["float64", "fd-grad-loss"]["rtol"],
            atol=TOL["float64", "fd-grad-loss"]["atol"],
            err_msg=name,
        )


def test_filter_jit_does_not_retrace_when_float_leaves_change(hand):
    batch = stack_exposures(hand)
    traces = 0

    @eqx.filter_jit
    def weights(task, batch):
        nonlocal traces
        traces += 1
        return task.softReferenceWeights(batch)

    task = MatchBackgroundsTask(CFG)
    variants = [
        task,
        eqx.tree_at(lambda t: t.refWeights, task, _leaf([1.0, 0.1, 0.1])),
        eqx.tree_at(lambda t: t.softminTemperature, task, _leaf(1e-3)),
        eqx.tree_at(lambda t: t.splineRoughness, task, _leaf(3.0)),
    ]
    outs = [np.asarray(weights(t, batch)) for t in variants]
    assert traces == 1
    # the leaves are inputs of the compiled function, not constants baked into it
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[0], outs[2])
    # a new static config does retrace, so the counter would see a retrace
    weights(MatchBackgroundsTask(CFG.replace(softminTemperature=1.0)), batch)
    assert traces == 2


# ------------------------------------------------------------- 5. Gen3 reference cost
def test_gen3_reference_selection_prefers_the_flattest_background():
    """refSelection="GEN3": a flat, quiet exposure beats a curved one (χ² term) and a
    noisy one (variance term); the soft-min follows and has gradients in the Gen3
    weights (leaf ``refWeightsGen3``)."""
    rng = np.random.default_rng(8)
    y, x = np.mgrid[:48, :48] / 48.0
    flat = 10 + 0.5 * x + rng.normal(0, 1, (48, 48))
    curved = 10 + 40 * (x - 0.5) ** 2 + rng.normal(0, 1, (48, 48))
    noisy = 10 + 0.5 * y + rng.normal(0, 2, (48, 48))
    exposures = [Exposure(im) for im in (curved, flat, noisy)]
    task = MatchBackgroundsTask()
    task.config.refSelection = "GEN3"
    task.config.binSize = 8
    task.config.softminTemperature = 0.01
    assert task.selectRefExposure(exposures, None, DATASET) == 1
    assert task.metadata["refIndex"] == 1
    batch = stack_exposures(exposures)
    weights = _soft_weights(task, batch)
    np.testing.assert_allclose(weights, [0, 1, 0], atol=1e-6)  # T = 0.01, cost gaps > 0.1

    warm = eqx.tree_at(lambda t: t.softminTemperature, task, _leaf(0.2))
    grads = eqx.filter_grad(lambda t: t.softReferenceWeights(batch)[1])(warm)
    assert np.all(np.isfinite(grads.refWeightsGen3)) and np.any(grads.refWeightsGen3 != 0)
    assert np.all(np.asarray(grads.refWeights) == 0)  # the Gen2 weights are not used
