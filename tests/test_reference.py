"""Tests for jaxmatch._reference: LSST reference cost, hard argmin, soft-min."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from tolerances import TOL

from jaxmatch._reference import (
    reference_costs,
    reference_statistics,
    select_reference,
    soft_reference,
    softmin_weights,
)

# Tolerances, one table, each with its reason.

W_LSST = dict(weight_coverage=0.4, weight_variance=0.4, weight_level=0.2)

# Eager mode compiles every primitive on first use, which dominates the run
# time; most tests use jitted wrappers (jit == plain is tested separately).
statistics_jit = jax.jit(reference_statistics)
costs_jit = jax.jit(reference_costs)
select_jit = jax.jit(select_reference)
softmin_jit = jax.jit(softmin_weights)


# ---------------------------------------------------------------- NumPy oracle
def np_statistics(image, usable):
    """Plain NumPy float64 variance (ddof=1), mean and count of usable pixels."""
    good = usable & np.isfinite(image)
    values = image[good].astype(np.float64)
    n = values.size
    var = values.var(ddof=1) if n >= 2 else np.nan
    level = values.mean() if n >= 1 else np.nan
    return var, level, float(n)


def np_lsst_costs(var, level, coverage, weight_coverage, weight_variance, weight_level):
    """LSST's cost exactly as selectRefExposure computes it (nanmax(level))."""
    var, level, coverage = (np.asarray(a, dtype=np.float64) for a in (var, level, coverage))
    return (
        weight_variance * var / np.nanmax(var)
        + weight_level * level / np.nanmax(level)
        + weight_coverage * np.nanmin(coverage) / coverage
    )


def assert_close(actual, desired, key):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), **TOL[key])


def make_batch(rng, n=4, shape=(12, 10)):
    """N images with different levels/scatters, masks and NaNs under the mask."""
    levels = rng.uniform(50.0, 150.0, size=n)
    sigmas = rng.uniform(0.5, 3.0, size=n)
    images = levels[:, None, None] + sigmas[:, None, None] * rng.standard_normal((n, *shape))
    usable = rng.uniform(size=(n, *shape)) > 0.3
    images[~usable & (rng.uniform(size=(n, *shape)) > 0.5)] = np.nan  # NaN behind the mask
    return images, usable


# ---------------------------------------------------------- reference_statistics
def test_statistics_match_numpy_with_masks_and_nans(rng):
    images, usable = make_batch(rng)
    images[0, 0, 0], usable[0, 0, 0] = np.nan, True  # NaN on a pixel flagged usable
    images[1, 1, 1], usable[1, 1, 1] = np.inf, True  # inf on a pixel flagged usable
    for image, mask in zip(images, usable):
        got = statistics_jit(jnp.asarray(image), jnp.asarray(mask))
        assert all(g.dtype == jnp.float64 for g in got)
        assert_close(got, np_statistics(image, mask), ("float64", "reordered-sum"))


def test_statistics_gradient_ignores_unusable_pixels(rng):
    image, usable = (a[0] for a in make_batch(rng))
    image[0, 0], usable[0, 0] = np.nan, True

    def total(x):
        var, level, cov = reference_statistics(x, jnp.asarray(usable))
        return var + level + cov

    grad = np.asarray(jax.jit(jax.grad(total))(jnp.asarray(image)))
    good = usable & np.isfinite(image)
    assert np.all(np.isfinite(grad))
    assert np.all(grad[~good] == 0.0)
    # d(mean)/dx = 1/n, d(var)/dx = 2(x - mean)/(n-1): the analytic gradient.
    x, n = image[good], good.sum()
    np.testing.assert_allclose(grad[good], 1 / n + 2 * (x - x.mean()) / (n - 1), rtol=1e-12)


@pytest.mark.parametrize("n_usable", [0, 1])
def test_statistics_too_few_pixels(n_usable):
    image = jnp.arange(12.0).reshape(3, 4).at[0, 0].set(jnp.nan)
    usable = jnp.zeros((3, 4), bool).at[1, 2].set(n_usable == 1).at[0, 0].set(True)
    var, level, cov = statistics_jit(image, usable)
    assert jnp.isnan(var)
    assert float(cov) == n_usable
    if n_usable == 0:
        assert jnp.isnan(level)
    else:
        assert float(level) == 6.0

    def total(x):
        return jnp.nansum(jnp.stack(reference_statistics(x, usable)))

    grad = jax.jit(jax.grad(total))(image)
    assert jnp.all(jnp.isfinite(grad))


def test_statistics_float32_high_sky_level(rng):
    image32 = (1e4 + 0.1 * rng.standard_normal((64, 64))).astype(np.float32)
    usable = rng.uniform(size=(64, 64)) > 0.1
    var32, level32, cov32 = statistics_jit(jnp.asarray(image32), jnp.asarray(usable))
    assert var32.dtype == level32.dtype == cov32.dtype == jnp.float32
    var64, level64, cov64 = np_statistics(image32.astype(np.float64), usable)
    assert_close(var32, var64, ("float32", "variance"))
    assert_close(level32, level64, ("float32", "level"))
    assert float(cov32) == cov64
    # The test has teeth: the one-pass formula in float32 is wildly wrong here.
    x = jnp.asarray(image32)[jnp.asarray(usable)]
    naive = (jnp.mean(x**2) - jnp.mean(x) ** 2) * x.size / (x.size - 1)
    assert abs(float(naive) / var64 - 1) > 0.1


def test_statistics_jit_and_vmap(rng):
    images, usable = (jnp.asarray(a) for a in make_batch(rng))
    plain = [reference_statistics(i, u) for i, u in zip(images, usable)]
    jitted = [jax.jit(reference_statistics)(i, u) for i, u in zip(images, usable)]
    batched = jax.vmap(reference_statistics, in_axes=(0, 0))(images, usable)
    for k in range(3):
        stacked = np.stack([p[k] for p in plain])
        np.testing.assert_array_equal(np.stack([j[k] for j in jitted]), stacked)
        # vmap may reorder a reduction: allow a few ulps.
        np.testing.assert_allclose(batched[k], stacked, rtol=1e-14)


# --------------------------------------------- reference_costs + select_reference
# Three exposures; each term alone prefers a different one (all levels > 0,
# so LSST's nanmax(level) and jaxmatch's max|level| coincide):
#   0: lowest variance;  1: lowest level;  2: highest coverage.
VAR = np.array([1.0, 4.0, 3.0])
LEVEL = np.array([120.0, 80.0, 100.0])
COVERAGE = np.array([500.0, 700.0, 1000.0])


@pytest.mark.parametrize(
    "weights, winner",
    [
        (dict(weight_coverage=0.0, weight_variance=1.0, weight_level=0.0), 0),
        (dict(weight_coverage=0.0, weight_variance=0.0, weight_level=1.0), 1),
        (dict(weight_coverage=1.0, weight_variance=0.0, weight_level=0.0), 2),
        (W_LSST, None),
    ],
)
def test_costs_match_lsst(weights, winner):
    costs = costs_jit(jnp.asarray(VAR), jnp.asarray(LEVEL), jnp.asarray(COVERAGE), **weights)
    expected = np_lsst_costs(VAR, LEVEL, COVERAGE, **weights)
    assert_close(costs, expected, ("float64", "reordered-sum"))
    assert int(select_jit(costs)) == int(np.nanargmin(expected))
    if winner is not None:
        assert int(select_jit(costs)) == winner


def test_costs_end_to_end_from_images(rng):
    images, usable = make_batch(rng, n=5)
    stats = jax.vmap(reference_statistics)(jnp.asarray(images), jnp.asarray(usable))
    costs = jax.jit(lambda *s: reference_costs(*s, **W_LSST))(*stats)
    oracle = np.array([np_statistics(i, u) for i, u in zip(images, usable)]).T
    expected = np_lsst_costs(*oracle, **W_LSST)
    assert_close(costs, expected, ("float64", "reordered-sum"))
    assert int(jax.jit(select_reference)(costs)) == int(np.nanargmin(expected))


def test_missing_exposure_is_skipped():
    # Exposure 1 "cannot be read": NaN placeholders, as LSST; it would
    # otherwise win on every term.
    var, level, cov = VAR.copy(), LEVEL.copy(), COVERAGE.copy()
    var = np.insert(var, 1, np.nan)
    level = np.insert(level, 1, np.nan)
    cov = np.insert(cov, 1, np.nan)
    costs = costs_jit(var, level, cov, **W_LSST)
    assert np.isnan(costs[1])
    assert_close(
        costs, np_lsst_costs(var, level, cov, **W_LSST), ("float64", "reordered-sum")
    )  # NaN == NaN
    assert int(select_jit(costs)) == int(np.nanargmin(np.asarray(costs)))
    assert int(select_jit(costs)) != 1


def test_all_missing_gives_minus_one():
    nan3 = jnp.full(3, jnp.nan)
    costs = costs_jit(nan3, nan3, nan3, **W_LSST)
    assert jnp.all(jnp.isnan(costs))
    assert int(select_reference(costs)) == -1
    assert int(jax.jit(select_reference)(costs)) == -1
    # ... and the soft-min gives no weight to anything, without NaN.
    np.testing.assert_array_equal(softmin_jit(costs, 0.1), np.zeros(3))


def test_zero_coverage_entry_does_not_normalise_others():
    # Documented deviation: an exposure with no usable pixel (coverage 0) is
    # skipped and, unlike LSST's nanmin(coverage), does not zero the
    # coverage term of everyone else.
    var = np.append(VAR, np.nan)
    level = np.append(LEVEL, np.nan)
    cov = np.append(COVERAGE, 0.0)
    weights = dict(weight_coverage=1.0, weight_variance=0.0, weight_level=0.0)
    costs = np.asarray(costs_jit(var, level, cov, **weights))
    assert np.isnan(costs[3])
    assert_close(
        costs[:3], np_lsst_costs(VAR, LEVEL, COVERAGE, **weights), ("float64", "reordered-sum")
    )
    assert int(select_jit(costs)) == 2


def test_degenerate_normalisers_give_zero_terms():
    # all variances 0 and all levels 0: those terms are 0, not 0/0 = NaN.
    zeros = jnp.zeros(3)
    costs = costs_jit(zeros, zeros, jnp.asarray(COVERAGE), **W_LSST)
    assert_close(costs, 0.4 * COVERAGE.min() / COVERAGE, ("float64", "reordered-sum"))


def test_negative_levels_prefer_most_negative():
    # Documented deviation: level / max|level|, so lower (more negative) wins.
    level = np.array([-5.0, -1.0, -2.0])
    ones = np.ones(3)
    weights = dict(weight_coverage=0.0, weight_variance=0.0, weight_level=1.0)
    costs = costs_jit(ones, level, ones, **weights)
    assert_close(costs, level / 5.0, ("float64", "reordered-sum"))
    assert int(select_jit(costs)) == 0
    # LSST's level / nanmax(level) divides by -1 and prefers the least negative.
    assert int(np.nanargmin(np_lsst_costs(ones, level, ones, **weights))) == 1


# --------------------------------------------------------------------- soft-min
def test_softmin_small_temperature_is_hard_argmin(rng):
    costs = jnp.asarray(np.append(rng.uniform(0.0, 1.0, 6), np.nan))
    weights = softmin_jit(costs, 1e-4)
    expected = np.zeros(7)
    expected[int(select_jit(costs))] = 1.0
    # gaps between random costs are >> T, so exp(-gap/T) underflows to 0.
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-12)


def test_softmin_is_stable_for_large_costs():
    # Without the min shift exp(-1e7) underflows for every entry: 0/0.
    weights = softmin_jit(jnp.asarray([1e3, 1e3 + 1.0]), 1e-4)
    np.testing.assert_array_equal(weights, [1.0, 0.0])


def test_softmin_sums_to_one_and_skips_nan(rng):
    costs = jnp.asarray([0.3, jnp.nan, 0.1, 0.7, jnp.inf])
    weights = softmin_jit(costs, 0.2)
    assert float(weights[1]) == 0.0 and float(weights[4]) == 0.0
    np.testing.assert_allclose(jnp.sum(weights), 1.0, rtol=1e-15)  # 3 terms: a few ulps
    finite = np.array([0.3, 0.1, 0.7])
    plain = np.exp(-finite / 0.2) / np.exp(-finite / 0.2).sum()
    assert_close(weights[jnp.array([0, 2, 3])], plain, ("float64", "reordered-sum"))
    # no NaN in the gradient (w.r.t. T, NaN - c_min would leak through a
    # bare where), and none at all w.r.t. the skipped entries
    grad, grad_t = jax.jit(jax.grad(lambda c, t: softmin_weights(c, t) @ jnp.arange(5.0), (0, 1)))(
        costs, 0.2
    )
    assert jnp.all(jnp.isfinite(grad)) and jnp.isfinite(grad_t)
    assert float(grad[1]) == 0.0 and float(grad[4]) == 0.0


def test_soft_reference_ignores_bad_pixels_of_unweighted_exposures(rng):
    images = rng.standard_normal((3, 4, 5))
    images[1, 2, 3] = np.nan
    weights = jnp.asarray([0.25, 0.0, 0.75])
    got = soft_reference(jnp.asarray(images), weights)
    assert_close(got, 0.25 * images[0] + 0.75 * images[2], ("float64", "reordered-sum"))
    # a NaN in a weighted exposure is not hidden
    images[2, 0, 0] = np.nan
    assert jnp.isnan(soft_reference(jnp.asarray(images), weights)[0, 0])


def test_soft_reference_exposure_weights_image_variance_and_masks(rng):
    from jaxmatch import Exposure, stack_exposures
    from jaxmatch._reference import soft_reference_exposure

    images = rng.standard_normal((3, 4, 5))
    variances = rng.uniform(1.0, 2.0, (3, 4, 5))
    masks = np.zeros((3, 4, 5), np.int32)
    masks[0, 0, 0], masks[1, 1, 1], masks[2, 2, 2] = 1, 2, 4
    batch = stack_exposures([Exposure(images[k], masks[k], variances[k]) for k in range(3)])
    weights = np.array([0.25, 0.0, 0.75])
    ref = soft_reference_exposure(batch, jnp.asarray(weights))
    assert_close(ref.image, np.tensordot(weights, images, 1), ("float64", "reordered-sum"))
    assert_close(ref.variance, np.tensordot(weights**2, variances, 1), ("float64", "reordered-sum"))
    # the OR of the weighted exposures' masks; the unweighted exposure masks nothing
    expected = np.zeros((4, 5), np.int32)
    expected[0, 0], expected[2, 2] = 1, 4
    np.testing.assert_array_equal(ref.mask, expected)
    assert ref.getMaskPlaneDict() == batch.getMaskPlaneDict()
    # differentiable in the weights: d(image)/dw_k = image_k
    grad = jax.grad(lambda w: soft_reference_exposure(batch, w).image[3, 4])(jnp.asarray(weights))
    assert_close(grad, images[:, 3, 4], ("float64", "reordered-sum"))


# -------------------------------------------------------------------- gradients
def test_softmin_gradients_match_finite_differences(rng):
    costs = jnp.asarray(rng.uniform(0.0, 1.0, 5))
    probe = jnp.asarray(rng.standard_normal(5))
    tol = TOL["float64", "fd-grad-cost"]

    @jax.jit  # check_grads calls it many times; compile once
    def loss(c, t):
        return softmin_weights(c, t) @ probe

    check_grads(loss, (costs, 0.3), order=1, modes=("fwd", "rev"), **tol)
    jac_fwd = jax.jit(jax.jacfwd(softmin_weights, argnums=(0, 1)))(costs, 0.3)
    jac_rev = jax.jit(jax.jacrev(softmin_weights, argnums=(0, 1)))(costs, 0.3)
    for f, r in zip(jac_fwd, jac_rev):
        np.testing.assert_allclose(f, r, rtol=1e-12, atol=1e-14)


def test_pipeline_gradients_match_finite_differences(rng):
    # images -> statistics -> costs -> soft-min -> soft reference -> scalar,
    # differentiated w.r.t. the images, the three weights and T.
    images, usable = make_batch(rng, n=3, shape=(5, 4))
    images = np.where(usable, images, 0.0)  # finite-difference steps need finite inputs
    images, usable = jnp.asarray(images), jnp.asarray(usable)
    probe = jnp.asarray(rng.standard_normal((5, 4)))

    @jax.jit  # check_grads calls it many times; compile once
    def loss(images, w_cov, w_var, w_lev, temperature):
        stats = jax.vmap(reference_statistics)(images, usable)
        costs = reference_costs(
            *stats, weight_coverage=w_cov, weight_variance=w_var, weight_level=w_lev
        )
        # scale images to O(1) so the finite-difference step is well-conditioned
        return jnp.sum(soft_reference(images / 100.0, softmin_weights(costs, temperature)) * probe)

    args = (images, 0.4, 0.4, 0.2, 0.3)
    check_grads(loss, args, order=1, modes=("fwd", "rev"), **TOL["float64", "fd-grad-cost"])
    grads = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(*args)
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert all(np.any(np.asarray(g) != 0) for g in grads)  # every input matters


# == the Gen3 cost (refSelection="GEN3") =================================================
from jaxmatch._reference import gen3_reference_costs, gen3_reference_statistics  # noqa: E402

_gen3_stats = jax.jit(gen3_reference_statistics, static_argnums=2)  # one compile per shape


def _numpy_gen3_statistics(image, usable, bin_size, nsig=3.0, niter=2):
    """NumPy float64 reading of the Gen3 statistics (module docstring of _reference)."""
    import oracle

    h, w = image.shape
    (ys, yn), (xs, xn) = oracle.cell_edges(h, bin_size), oracle.cell_edges(w, bin_size)
    rows = []
    for i in range(len(ys)):
        for j in range(len(xs)):
            block = image[ys[i] : ys[i] + yn[i], xs[j] : xs[j] + xn[j]]
            ok = usable[ys[i] : ys[i] + yn[i], xs[j] : xs[j] + xn[j]] & np.isfinite(block)
            if ok.sum() < 2:
                continue
            value, s, _ = oracle.cell_statistic(block[ok], "MEANCLIP", nsig, niter)
            u = 2 * (xs[j] + xn[j] / 2) / w - 1  # centre + 0.5, normalised
            v = 2 * (ys[i] + yn[i] / 2) / h - 1
            rows.append((u, v, value, s * s))
    u, v, z, var = map(np.array, zip(*rows))
    a = np.stack([np.ones_like(u), u, v], axis=1)
    sw = 1 / np.sqrt(var)
    coef = np.linalg.lstsq(a * sw[:, None], z * sw, rcond=None)[0]
    chi2 = np.sum((z - a @ coef) ** 2 / var) / (len(z) - 6)
    coverage = np.sum(usable & np.isfinite(image))
    return chi2, var.mean(), float(coverage)


def _gen3_image(seed, shape=(40, 48), curvature=0.0, sigma=1.0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]] / 10.0
    image = 5 + 0.3 * x - 0.2 * y + curvature * (x - 2.4) ** 2 + rng.normal(0, sigma, shape)
    usable = rng.random(shape) > 0.1
    image[3, 5] = np.nan  # unflagged NaN: dropped
    return image, usable


def test_gen3_statistics_match_numpy():
    for curvature in (0.0, 0.5):
        image, usable = _gen3_image(1, curvature=curvature)
        got = _gen3_stats(jnp.asarray(image), jnp.asarray(usable), 8)
        want = _numpy_gen3_statistics(image, usable, 8)
        # float64 both; lstsq vs normal equations of a 3-column, well-conditioned plane
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-9)
    flat = _gen3_stats(*map(jnp.asarray, _gen3_image(1)), 8)[0]
    curved = _gen3_stats(*map(jnp.asarray, _gen3_image(1, curvature=0.5)), 8)[0]
    assert float(curved) > 10 * float(flat)  # a curved background is not a plane


def test_gen3_statistics_float32_and_degenerate_cases():
    image, usable = _gen3_image(2, curvature=0.2)
    f64 = np.array(_gen3_stats(jnp.asarray(image), jnp.asarray(usable), 8))
    f32 = np.array(
        _gen3_stats(jnp.asarray(image, jnp.float32), jnp.asarray(usable), 8)
    )
    assert f32.dtype == np.float32
    # float32 sums over <= 64 pixels a bin and 30 bins: ~1e-6 relative; the plane's
    # residuals are ~10% of the values, so chi2 loses one more digit: 1e-4
    np.testing.assert_allclose(f32, f64, rtol=1e-4)
    few = np.zeros_like(usable)
    few[:16, :24] = True  # 2 x 3 = 6 valid bins: LSST's dof = 0, no chi2
    chi2, variance, coverage = _gen3_stats(jnp.asarray(image), jnp.asarray(few), 8)
    assert np.isnan(chi2) and np.isfinite(variance) and float(coverage) == 16 * 24 - 1  # a NaN


def test_gen3_costs_match_numpy_and_skip_nan():
    chi2 = np.array([2.0, 0.5, np.nan, 1.0])
    var = np.array([1.0, 3.0, 1.0, 2.0])
    cov = np.array([100.0, 80.0, 120.0, 50.0])
    got = gen3_reference_costs(
        chi2, var, cov, weight_chi2=0.3, weight_variance=0.3, weight_coverage=0.4
    )
    ok = np.isfinite(chi2)
    want = 0.3 * chi2 / 2.0 + 0.3 * var / 3.0 + 0.4 * 50.0 / cov  # maxima over candidates
    np.testing.assert_allclose(np.array(got)[ok], want[ok], rtol=1e-12)
    assert np.isnan(got[2])
    assert int(select_reference(got)) == int(np.nanargmin(np.where(ok, want, np.nan)))


def test_gen3_soft_min_gradients_match_finite_differences():
    """The soft-min weights of 3 exposures, differentiable in the images (through
    the plane fit's χ²) and in the three weights."""
    images = jnp.asarray(np.stack([_gen3_image(s, (24, 24), c)[0] for s, c in
                                   ((3, 0.0), (4, 0.3), (5, 0.1))]))  # fmt: skip
    images = jnp.where(jnp.isnan(images), 0.0, images)
    usable = jnp.ones(images.shape, bool)

    @jax.jit
    def weights(imgs, w):
        stats = jax.vmap(lambda im, us: gen3_reference_statistics(im, us, 6))(imgs, usable)
        costs = gen3_reference_costs(
            *stats, weight_chi2=w[0], weight_variance=w[1], weight_coverage=w[2]
        )
        return softmin_weights(costs, 0.1)

    w0 = jnp.asarray([0.3, 0.3, 0.4])
    grad_image = jax.grad(lambda im: weights(im, w0)[1])(images)
    assert float(jnp.abs(grad_image).max()) > 0
    # Central differences on a few pixels (eps 1e-5: no pixel crosses a clip bound).
    eps = 1e-5
    for idx in [(0, 3, 4), (1, 12, 12), (2, 20, 1)]:
        up = weights(images.at[idx].add(eps), w0)[1]
        down = weights(images.at[idx].add(-eps), w0)[1]
        np.testing.assert_allclose(grad_image[idx], (up - down) / (2 * eps), rtol=1e-5, atol=1e-9)
    check_grads(lambda w: weights(images, w), (w0,), order=1, modes=["rev"], eps=1e-4)
