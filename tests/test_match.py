"""The batched engine `jaxmatch.match` against the NumPy oracle, and its properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_pair_batch, oracle_of
from tolerances import TOL

import jaxmatch as jm

RTOL, ATOL = TOL["float64", "match-oracle"]["rtol"], TOL["float64", "match-oracle"]["atol"]

SHAPE = (80, 96)  # 5 x 6 bins of 16: enough knots for AKIMA
ODD_SHAPE = (75, 90)  # fit cells of 15 px (afw layout), diagnostic bins of 16 and a narrow last one

CASES = {
    "cheb-total-mean": (SHAPE, dict(usePolynomial=True, order=3, binSize=16)),
    "cheb-total-clip-unweighted": (
        SHAPE,
        dict(
            usePolynomial=True, order=4, binSize=16, gridStatistic="MEANCLIP", approxWeighting=False
        ),
    ),
    "cheb-tensor-median": (
        SHAPE,
        dict(
            usePolynomial=True,
            order=2,
            orderY=1,
            chebyshevTerms="TENSOR",
            binSize=16,
            gridStatistic="MEDIAN",
        ),
    ),
    "cheb-odd-shape": (ODD_SHAPE, dict(usePolynomial=True, order=2, binSize=16)),
    "cheb-ridge-softclip": (
        SHAPE,
        dict(
            usePolynomial=True,
            order=4,
            binSize=16,
            splineRoughness=0.2,
            gridStatistic="MEANCLIP",
            clipSharpness=4.0,
            numSigmaClip=2.0,
        ),
    ),
    "akima-mean": (SHAPE, dict(binSize=16)),
    "natural-clip-rough": (
        SHAPE,
        dict(
            binSize=16,
            interpStyle="NATURAL_SPLINE",
            gridStatistic="MEANCLIP",
            splineRoughness=0.5,
            numSigmaClip=2.5,
            numIter=3,
        ),
    ),
    "linear-median": (SHAPE, dict(binSize=16, interpStyle="LINEAR", gridStatistic="MEDIAN")),
    "constant-mean": (SHAPE, dict(binSize=16, interpStyle="CONSTANT")),
    "natural-odd-shape-knots2": (
        ODD_SHAPE,
        dict(binSize=16, interpStyle="NATURAL_SPLINE", splineKnotSpacing=2),
    ),
}


def _compare(result, k, ref, sci, config, *, grid=True):
    expected = oracle_of(ref, sci, config, k)
    assert int(result.status[k]) == expected["status"]
    if grid:  # after INCREASE_NXNYSAMPLE the result keeps the first (coarser) grid
        np.testing.assert_allclose(result.grid_values[k], expected["cell_values"], RTOL, ATOL)
        np.testing.assert_allclose(result.grid_errors[k], expected["cell_errors"], RTOL, ATOL)
        np.testing.assert_allclose(result.grid_weights[k], expected["cell_weights"], RTOL, ATOL)
    np.testing.assert_allclose(result.model.coefficients[k], expected["coefficients"], RTOL, ATOL)
    np.testing.assert_allclose(result.model[k].getImage(), expected["model"], RTOL, ATOL)
    np.testing.assert_allclose(result.matched[k], expected["matched"], RTOL, ATOL)
    for name, key in (
        ("fitRMS", "fit_rms"),
        ("matchedMSE", "matched_mse"),
        ("diffImVar", "diff_im_var"),
    ):
        np.testing.assert_allclose(getattr(result, name)[k], expected[key], RTOL, ATOL)
    return expected


@pytest.mark.parametrize("case", list(CASES))
def test_matches_oracle(case):
    shape, fields = CASES[case]
    config = jm.MatchBackgroundsConfig(**fields)
    ref, sci, _ = make_pair_batch(np.random.default_rng(7), shape, n_sci=2)
    result = jm.match(ref, sci, config)
    for k in range(2):
        expected = _compare(result, k, ref, sci, config)
        if config.usePolynomial:
            assert tuple(np.asarray(result.effective_order[k])) == tuple(
                expected["effective_order"]
            )


def _column_masked(shape, keep_columns, rng):
    """A batch whose science exposure is masked except in ``keep_columns`` bin columns."""
    ref, sci, _ = make_pair_batch(rng, shape, n_sci=1, defects=False)
    mask = np.array(sci.mask)
    mask[0, :, keep_columns * 16 :] |= 1 << jm.DEFAULT_MASK_PLANES["NO_DATA"]
    return ref, jm.Exposure(sci.image, mask, sci.variance)


@pytest.mark.parametrize("style", ["REDUCE_INTERP_ORDER", "THROW_EXCEPTION", "INCREASE_NXNYSAMPLE"])
def test_undersampling_styles_match_oracle(style):
    """Only 2 bin columns are usable: order 3 is undersampled (m = 2 <= 3)."""
    config = jm.MatchBackgroundsConfig(
        usePolynomial=True, order=3, binSize=16, undersampleStyle=style
    )
    ref, sci = _column_masked(SHAPE, 2, np.random.default_rng(3))
    result = jm.match(ref, sci, config, raise_on_failure=False)
    expected = _compare(result, 0, ref, sci, config, grid=style != "INCREASE_NXNYSAMPLE")
    if style == "REDUCE_INTERP_ORDER":
        assert tuple(np.asarray(result.effective_order[0])) == (1, 1) == expected["effective_order"]
        assert int(result.status[0]) == 0
    elif style == "THROW_EXCEPTION":
        assert int(result.status[0]) == 2
        with pytest.raises(ValueError, match="exposure 0: too few usable bins"):
            jm.match(ref, sci, config)
    else:  # re-fitted on (2 * 16) // 4 = 8 cells per axis (LSST), of 10 x 12 pixels:
        # the 32 usable columns fill 3 cell columns <= order 3, still undersampled
        assert int(result.bin_size[0]) == 12 == expected["bin_size_used"]
        assert int(result.status[0]) == 2


def test_recovers_simulated_backgrounds():
    """Realistic patch (stars, galaxies, masks, CRs, bad columns, partial coverage).

    The matched model must reproduce the true background difference to within
    15% of the per-pixel noise σ (RMS over the image). Noise alone limits a
    16×16-bin grid of 32² pixels to ~σ·√2/32 ≈ 0.05σ per bin; the spline and
    edge extrapolation add the rest.
    """
    patch = jm.simulate_patch(4, (192, 192), seed=3, coverage="partial")
    exposures = [
        jm.Exposure(
            patch.images[i], patch.masks[i], patch.variances[i], mask_planes=patch.mask_planes
        )
        for i in range(4)
    ]
    ref, sci = exposures[0], jm.stack_exposures(exposures[1:])
    sigma = float(np.sqrt(np.median(patch.variances[0])))
    for fields in (
        dict(binSize=32, interpStyle="NATURAL_SPLINE"),
        dict(binSize=32, usePolynomial=True, order=3),
    ):
        result = jm.match(ref, sci, jm.MatchBackgroundsConfig(**fields))
        truth = patch.backgrounds[0] - patch.backgrounds[1:]
        rms = np.sqrt(np.mean((np.asarray(result.model.getImage()) - truth) ** 2, axis=(1, 2)))
        print(fields, "model error RMS / sigma:", rms / sigma)
        assert np.all(rms < 0.15 * sigma)
        # and the match removes most of the background mismatch
        before = np.sqrt(np.mean(truth**2, axis=(1, 2)))
        assert np.all(rms < 0.1 * before)


CONFIG_SMALL = jm.MatchBackgroundsConfig(binSize=16, interpStyle="NATURAL_SPLINE")


def test_batch_equals_single_calls_and_jit():
    ref, sci, _ = make_pair_batch(np.random.default_rng(11), SHAPE, n_sci=3)
    batch = jm.match(ref, sci, CONFIG_SMALL)
    for k in range(3):
        single = jm.match(ref, sci[k], CONFIG_SMALL)
        np.testing.assert_allclose(single.matched[0], batch.matched[k], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(single.fitRMS[0], batch.fitRMS[k], rtol=1e-12)
    jitted = jax.jit(lambda r, s: jm.match(r, s, CONFIG_SMALL).matched)(ref, sci)
    np.testing.assert_allclose(jitted, batch.matched, rtol=1e-12, atol=1e-12)


def test_order_of_batch_does_not_matter():
    ref, sci, _ = make_pair_batch(np.random.default_rng(12), SHAPE, n_sci=3)
    perm = np.array([2, 0, 1])
    a = jm.match(ref, sci, CONFIG_SMALL)
    b = jm.match(ref, jax.tree.map(lambda x: x[perm], sci), CONFIG_SMALL)
    np.testing.assert_allclose(
        b.model.coefficients, a.model.coefficients[perm], rtol=1e-12, atol=1e-12
    )


def _directional_fd(fn, x, direction, h=1e-5):
    return (fn(x + h * direction) - fn(x - h * direction)) / (2 * h)


@pytest.mark.parametrize(
    "fields",
    [
        dict(binSize=16, interpStyle="NATURAL_SPLINE", splineRoughness=0.3),
        dict(binSize=16, usePolynomial=True, order=2),
        dict(binSize=16),  # AKIMA (non-linear evaluation)
    ],
)
def test_gradients_match_finite_differences(fields):
    """d/d(science, reference, λ) of a scalar of the outputs vs central differences.

    float64, step 1e-5: the truncation error is O(h²·f''') ≈ 1e-10 and the
    rounding error O(ε·|f|/h) ≈ 1e-9 relative, so 1e-6 relative is a safe bound.
    """
    config = jm.MatchBackgroundsConfig(**fields)
    rng = np.random.default_rng(5)
    ref, sci, _ = make_pair_batch(rng, SHAPE, n_sci=2)

    def loss(sci_image, ref_image, rough):
        s = jm.Exposure(sci_image, sci.mask, sci.variance)
        r = jm.Exposure(ref_image, ref.mask, ref.variance)
        out = jm.match(r, s, config, roughness=rough, raise_on_failure=False)
        return (
            jnp.sum(out.fitRMS**2) + jnp.sum(out.matchedMSE) + jnp.mean(out.model.getImage() ** 2)
        )

    loss = jax.jit(loss)
    rough = jnp.asarray(0.3)
    grads = jax.grad(loss, argnums=(0, 1, 2))(sci.image, ref.image, rough)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    for arg, grad in ((0, grads[0]), (1, grads[1])):
        x = (sci.image, ref.image)[arg]
        direction = jnp.where(jnp.isfinite(x), jnp.asarray(rng.normal(size=x.shape)), 0.0)
        fn = (
            (lambda v: loss(v, ref.image, rough))
            if arg == 0
            else (lambda v: loss(sci.image, v, rough))
        )
        fd = _directional_fd(fn, x, direction)
        np.testing.assert_allclose(
            jnp.sum(jnp.where(jnp.isfinite(x), grad * direction, 0.0)), fd, rtol=1e-6
        )
    if not config.usePolynomial:
        fd = (
            loss(sci.image, ref.image, rough + 1e-5) - loss(sci.image, ref.image, rough - 1e-5)
        ) / 2e-5
        np.testing.assert_allclose(grads[2], fd, rtol=1e-6)
        assert abs(float(grads[2])) > 0  # λ does change the fit


def test_failed_exposure_is_flagged_not_nan_silently():
    ref, sci, _ = make_pair_batch(np.random.default_rng(2), SHAPE, n_sci=2, defects=False)
    mask = np.array(sci.mask)
    mask[1] |= 1 << jm.DEFAULT_MASK_PLANES["NO_DATA"]
    sci = jm.Exposure(sci.image, mask, sci.variance)
    result = jm.match(ref, sci, CONFIG_SMALL, raise_on_failure=False)
    assert list(np.asarray(result.status)) == [0, 1]
    assert np.all(np.isfinite(result.model.coefficients[0]))
    assert np.all(np.isnan(result.model.coefficients[1]))
    np.testing.assert_array_equal(result.matched[1], sci.image[1])  # left unchanged
    assert np.isnan(result.fitRMS[1])
    with pytest.raises(ValueError, match="exposure 1: no usable bin"):
        jm.match(ref, sci, CONFIG_SMALL)


def test_bad_input_errors():
    rng = np.random.default_rng(0)
    ref, sci, _ = make_pair_batch(rng, SHAPE, n_sci=1, defects=False)
    other = jm.Exposure(np.zeros((80, 80)))
    with pytest.raises(ValueError, match="same pixel grid"):
        jm.match(ref, jm.stack_exposures([other]), CONFIG_SMALL)
    with pytest.raises(TypeError, match="jaxmatch.Exposure"):
        jm.match(np.zeros(SHAPE), sci, CONFIG_SMALL)
    with pytest.raises(ValueError, match="binSize"):
        jm.MatchBackgroundsConfig(binSize=0)
    with pytest.raises(ValueError, match="order=5 > npoints - 1 = 4"):
        jm.match(ref, sci, jm.MatchBackgroundsConfig(usePolynomial=True, order=5, binSize=16))
    with pytest.raises(ValueError, match="smaller than binSize"):
        jm.match(ref, sci, jm.MatchBackgroundsConfig(usePolynomial=True, order=1, binSize=100))
    with pytest.raises(ValueError, match="too few for interpStyle=AKIMA_SPLINE"):
        jm.match(
            ref, sci, jm.MatchBackgroundsConfig(binSize=32, undersampleStyle="THROW_EXCEPTION")
        )
    with pytest.raises(ValueError, match="not in this exposure's planes"):
        jm.match(ref, sci, jm.MatchBackgroundsConfig(binSize=16, badMaskPlanes=["NOPE"]))


def test_reduce_interp_order_for_the_spline_falls_back():
    """3 x 3 bins cannot carry AKIMA (needs 5): REDUCE uses NATURAL_SPLINE, like afw."""
    ref, sci, _ = make_pair_batch(np.random.default_rng(0), (48, 48), n_sci=1, defects=False)
    result = jm.match(ref, sci, jm.MatchBackgroundsConfig(binSize=16))
    assert result.model.basis.style == "NATURAL_SPLINE"


def test_float32_agrees_with_float64():
    """Large sky (1e4 ADU) and unit noise: float32 models agree with float64 to 1e-3 ADU.

    float32 carries 7 digits, so a 1e4 sky is resolved to ~1e-3 ADU per pixel; the
    difference image removes the sky before any sum, leaving O(1) values whose bin
    means are good to ~1e-6 relative.
    """
    ref, sci, _ = make_pair_batch(np.random.default_rng(4), SHAPE, n_sci=2, sky=1e4)
    res64 = jm.match(ref, sci, CONFIG_SMALL)
    res32 = jm.match(ref, sci, CONFIG_SMALL.replace(dtype="float32"))
    assert res32.matched.dtype == jnp.float32
    np.testing.assert_allclose(res32.model.getImage(), res64.model.getImage(), atol=1e-3)
