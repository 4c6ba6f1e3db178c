"""Correctness of the task's fast paths (not their speed: see benchmarks/).

1. `BackgroundModel.getImage()` is one cached compiled program per basis: it
   equals the element-by-element evaluation (``evaluate(y, x)`` at explicit
   pixel coordinates, the eager path) for every model family, batched or not, in
   float64 and float32, keeps gradients, and compiles once per basis.
2. ``match_list`` (the task's batched fit: a list in, no stacked copy) gives what
   ``match`` gives on the stacked batch, plus model images equal to ``getImage()``.
3. ``run`` returns ``refIndex`` and ``matchedExposureList`` equal to the engine's
   results, and each ``backgroundModel.getImage()`` is the engine's model image.
4. The helpers: zero-copy batch items and the reference statistics of a list.

Small images (64 x 96, binSize 16: 4 x 6 cells, so AKIMA has its 5 knots along x
only where asked) and batches of 3 keep it fast.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_pair_batch
from tolerances import TOL

from jaxmatch import (
    BackgroundModel,
    Exposure,
    MatchBackgroundsConfig,
    MatchBackgroundsTask,
    _evaluate,
    match,
    stack_exposures,
)
from jaxmatch._model import Basis
from jaxmatch._taskpath import EvaluatedModel, batch_item, match_list

SHAPE = (80, 96)  # 5 x 6 cells of 16 px: AKIMA keeps its style on both axes
DATASET = "deepCoadd_tempExp"
# One computation compiled as two programs (tests/tolerances.py says why).
SAME64 = TOL["float64", "program-vs-program"]
SAME32 = TOL["float32", "program-vs-program"]
CONFIGS = {
    "akima-mean": MatchBackgroundsConfig(binSize=16),  # LSST's defaults
    "natural-meanclip": MatchBackgroundsConfig(
        binSize=16, interpStyle="NATURAL_SPLINE", gridStatistic="MEANCLIP"
    ),
    "cheb-median": MatchBackgroundsConfig(
        binSize=16, usePolynomial=True, order=3, gridStatistic="MEDIAN"
    ),
}


def _exposures(rng, n=3, dtype=np.float64):
    ref, sci, _ = make_pair_batch(rng, SHAPE, n_sci=n)
    cast = lambda e: Exposure(  # noqa: E731
        np.asarray(e.image, dtype), np.asarray(e.mask), np.asarray(e.variance, dtype)
    )
    return cast(ref), [cast(sci[k]) for k in range(n)]


def _eager_image(model: BackgroundModel):
    """The element-by-element evaluation at explicit pixel coordinates.

    The coordinates are arguments of the compiled function (traced, not constants),
    so this is the general ``evaluate(y, x)`` path, not ``getImage``'s grid path;
    compiled once per shape rather than run op by op (which compiles every
    operation on its own).
    """
    h, w = model.basis.shape
    return _evaluate_at(model, jnp.arange(h), jnp.arange(w))


@eqx.filter_jit
def _evaluate_at(model: BackgroundModel, y, x):
    return model.evaluate(y, x)


# -- 1. getImage ---------------------------------------------------------------------
def test_get_image_compiles_once_per_basis_and_keeps_gradients(rng, monkeypatch):
    # A basis no other test uses, so its first evaluation compiles here.
    basis = Basis(
        "SPLINE",
        (40, 56),
        style="AKIMA_SPLINE",
        knots_y=(4.5, 13.5, 22.5, 31.5, 36.0),
        knots_x=tuple(np.arange(6) * 9.0 + 4),
    )
    traces = []
    grid = _evaluate._pixel_grid
    monkeypatch.setattr(_evaluate, "_pixel_grid", lambda *a: traces.append(1) or grid(*a))
    coefficients = jnp.asarray(rng.normal(size=basis.coefficient_shape))
    first = BackgroundModel(coefficients, basis).getImage()
    second = BackgroundModel(coefficients * 2, basis).getImage()
    assert len(traces) == 1  # a new model of the same basis reuses the compilation
    np.testing.assert_allclose(first, _eager_image(BackgroundModel(coefficients, basis)), **SAME64)
    np.testing.assert_allclose(second, 2 * first, rtol=1e-12, atol=1e-12)
    batch = BackgroundModel(jnp.stack([coefficients, -coefficients]), basis).getImage()
    np.testing.assert_allclose(batch, np.stack([first, -first]), **SAME64)

    weights = jnp.asarray(rng.normal(size=basis.shape))
    fast = jax.grad(lambda c: jnp.sum(weights * BackgroundModel(c, basis).getImage()))
    slow = jax.grad(lambda c: jnp.sum(weights * _eager_image(BackgroundModel(c, basis))))
    np.testing.assert_allclose(fast(coefficients), slow(coefficients), rtol=1e-9, atol=1e-9)
    jitted = jax.jit(lambda c: BackgroundModel(c, basis).getImage())(coefficients)
    np.testing.assert_allclose(jitted, first, **SAME64)


# -- 2. match_list -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_match_list_equals_match_on_the_stack(rng, name):
    ref, scis = _exposures(rng)
    config = CONFIGS[name]
    expected = match(ref, stack_exposures(scis), config, raise_on_failure=False)
    fit = match_list(ref, scis, config)
    np.testing.assert_array_equal(fit.status, np.asarray(expected.status))
    for field in ("fitRMS", "matchedMSE", "diffImVar"):
        np.testing.assert_allclose(
            getattr(fit, field), np.asarray(getattr(expected, field)), rtol=1e-10
        )
    for k in range(3):
        model = fit.models[k]
        assert isinstance(model, EvaluatedModel) and model.basis == expected.model.basis
        np.testing.assert_allclose(
            model.coefficients, expected.model.coefficients[k], rtol=1e-10, atol=1e-10
        )
        np.testing.assert_allclose(model.getImage(), expected.model[k].getImage(), **SAME64)
        # getImage (one compiled program) = the element-by-element evaluation
        np.testing.assert_allclose(
            expected.model[k].getImage(), _eager_image(expected.model[k]), **SAME64
        )
        np.testing.assert_allclose(fit.matched[k], expected.matched[k], **SAME64)
        # evaluate() elsewhere than the full grid is the plain model's
        y, x = jnp.asarray([0.0, 7.5, 79.0]), jnp.asarray([3.0, 95.0])
        np.testing.assert_allclose(model.evaluate(y, x), expected.model[k].evaluate(y, x))


def test_match_list_loop_and_stacked_programs_agree(rng, monkeypatch):
    """On the CPU the list is fitted by a loop over its exposures (no stacked copy);
    other backends stack it and vectorise. Both give the same fit (float64: to the
    rounding of a differently compiled sum)."""
    import jaxmatch._taskpath as taskpath

    ref, scis = _exposures(rng)
    scis[1] = Exposure(np.full(scis[1].image.shape, np.nan))  # a failed fit among them
    config = CONFIGS["akima-mean"]
    assert jax.default_backend() in taskpath.LOOP_BACKENDS
    looped = match_list(ref, scis, config)
    monkeypatch.setattr(taskpath, "LOOP_BACKENDS", ())
    stacked = match_list(ref, scis, config)
    np.testing.assert_array_equal(looped.status, stacked.status)
    assert looped.status[1] != 0 and looped.status[0] == looped.status[2] == 0
    for field in ("fitRMS", "matchedMSE", "diffImVar"):
        np.testing.assert_allclose(getattr(looped, field), getattr(stacked, field), rtol=1e-10)
    for k in range(3):
        np.testing.assert_allclose(
            looped.models[k].coefficients, stacked.models[k].coefficients, rtol=1e-10, atol=1e-10
        )
        images = looped.models[k].getImage(), stacked.models[k].getImage()
        np.testing.assert_allclose(*images, **SAME64)
        np.testing.assert_allclose(looped.matched[k], stacked.matched[k], **SAME64)


def test_match_list_float32_and_increase_nxnysample(rng):
    ref, scis = _exposures(rng, dtype=np.float32)
    config = CONFIGS["akima-mean"]
    expected = match(ref, stack_exposures(scis), config, raise_on_failure=False)
    fit = match_list(ref, scis, config)
    for k in range(3):
        assert fit.matched[k].dtype == jnp.float32
        np.testing.assert_allclose(fit.matched[k], expected.matched[k], **SAME32)
        np.testing.assert_allclose(fit.models[k].getImage(), expected.model[k].getImage(), **SAME32)
    # the data-dependent re-binning goes through match itself: same results
    cheb = MatchBackgroundsConfig(
        binSize=16, usePolynomial=True, order=2, undersampleStyle="INCREASE_NXNYSAMPLE"
    )
    expected = match(ref, stack_exposures(scis), cheb, raise_on_failure=False)
    fit = match_list(ref, scis, cheb)
    np.testing.assert_array_equal(fit.status, np.asarray(expected.status))
    for k in range(3):
        np.testing.assert_allclose(fit.models[k].getImage(), expected.model[k].getImage(), **SAME32)


def test_match_list_refuses_what_stack_refuses(rng):
    ref, scis = _exposures(rng)
    with pytest.raises(ValueError, match="empty"):
        match_list(ref, [], CONFIGS["akima-mean"])
    odd = Exposure(np.zeros((80, 80)))
    with pytest.raises(ValueError, match="exposure 1 has shape"):
        match_list(ref, [scis[0], odd], CONFIGS["akima-mean"])
    with pytest.raises(TypeError, match="not an Exposure"):
        match_list(ref, [scis[0], "x"], CONFIGS["akima-mean"])


# -- 3. run --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["akima-mean", "natural-meanclip"])
def test_run_returns_the_engine_results(rng, name):
    ref, scis = _exposures(rng)
    exposures = [scis[0], ref, scis[1], scis[2]]
    config = CONFIGS[name]
    task = MatchBackgroundsTask(config=config)
    result = task.run(exposures, DATASET, refExpDataRef=ref)
    assert result.refIndex == 1
    assert result.matchedExposureList[1] is ref
    expected = match(ref, stack_exposures([scis[0], scis[1], scis[2]]), config)
    for k, i in enumerate([0, 2, 3]):
        info = result.backgroundInfoList[i]
        np.testing.assert_allclose(
            info.backgroundModel.getImage(), expected.model[k].getImage(), **SAME64
        )
        np.testing.assert_allclose(
            info.backgroundModel.getImage(), _eager_image(expected.model[k]), **SAME64
        )
        np.testing.assert_allclose(info.fitRMS, float(expected.fitRMS[k]), rtol=1e-10)
        matched = result.matchedExposureList[i]
        np.testing.assert_allclose(matched.image, expected.matched[k], **SAME64)
        assert matched.mask is exposures[i].mask and matched.variance is exposures[i].variance
        assert matched.getMaskPlaneDict() == exposures[i].getMaskPlaneDict()
    # the exposures themselves are not modified
    np.testing.assert_array_equal(exposures[0].image, scis[0].image)

    # reference chosen by the task: refIndex is selectRefExposure's choice
    chosen = task.run(exposures, DATASET)
    assert chosen.refIndex == task.selectRefExposure(exposures, None, DATASET)
    assert chosen.backgroundInfoList[chosen.refIndex].isReference


def test_run_failed_fit_has_no_matched_exposure_and_global_mode_fills_the_list(rng):
    ref, scis = _exposures(rng)
    empty = Exposure(np.full(SHAPE, np.nan), np.full(SHAPE, 1 << 8, np.int32), np.ones(SHAPE))
    task = MatchBackgroundsTask(config=CONFIGS["natural-meanclip"])
    # three science exposures, as in the other tests: the compiled programs are reused
    result = task.run([ref, scis[0], empty, scis[1]], DATASET, refExpDataRef=ref)
    assert result.backgroundInfoList[2].backgroundModel is None
    assert result.matchedExposureList[2] is None
    assert result.matchedExposureList[1] is not None and result.matchedExposureList[3] is not None

    glob = MatchBackgroundsTask(config=CONFIGS["natural-meanclip"].replace(matchMode="GLOBAL"))
    out = glob.run([ref, scis[0], scis[1]], DATASET, refExpDataRef=ref)
    for i in (1, 2):
        info, matched = out.backgroundInfoList[i], out.matchedExposureList[i]
        expected = scis[i - 1].image + info.backgroundModel.getImage()
        np.testing.assert_allclose(matched.image, expected, **SAME64)


# -- 4. helpers ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 64, 64), (3, 7, 5)])  # aligned items, and not
def test_batch_item_equals_indexing(shape):
    batch = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
    for k in range(shape[0]):
        item = batch_item(batch, k)
        assert isinstance(item, jax.Array) and item.dtype == batch.dtype
        np.testing.assert_array_equal(item, batch[k])
    del batch  # the items keep their memory alive
    size = int(np.prod(shape[1:]))
    np.testing.assert_array_equal(item, (np.arange(size) + k * size).reshape(shape[1:]))
