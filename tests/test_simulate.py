"""Tests of the simulated patch: determinism, the noise model, masks, backgrounds."""

import numpy as np
import pytest
from numpy.polynomial import legendre
from scipy import ndimage, stats

from jaxmatch._exposure import DEFAULT_MASK_PLANES
from jaxmatch._simulate import MASK_PLANES, SimulatedPatch, simulate_patch

FIELDS = ("images", "masks", "variances", "backgrounds", "scales")
NO_DATA = 1 << MASK_PLANES["NO_DATA"]


def bit(name):
    return 1 << MASK_PLANES[name]


def has(masks, name):
    return (masks & bit(name)) != 0


def assert_same(a: SimulatedPatch, b: SimulatedPatch):
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.scene, b.scene)


@pytest.fixture(scope="module")
def patch():
    """The default demo patch (N=4, 256×256, seed 0)."""
    return simulate_patch()


def test_same_seed_same_arrays():
    assert_same(simulate_patch(3, (64, 80), seed=7), simulate_patch(3, (64, 80), seed=7))


def test_different_seeds_differ():
    a, b = simulate_patch(2, (64, 64), seed=1), simulate_patch(2, (64, 64), seed=2)
    assert not np.array_equal(a.scene, b.scene)
    assert not np.array_equal(a.backgrounds, b.backgrounds)
    assert not np.array_equal(a.images, b.images, equal_nan=True)


def test_exposures_do_not_depend_on_their_number():
    few, many = simulate_patch(2, (64, 64), seed=3), simulate_patch(5, (64, 64), seed=3)
    np.testing.assert_array_equal(few.scene, many.scene)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(few, name), getattr(many, name)[:2])


def test_shapes_and_dtypes():
    p = simulate_patch(3, (48, 72), seed=0)  # H ≠ W catches a transposition
    for name in ("images", "variances", "backgrounds"):
        arr = getattr(p, name)
        assert arr.shape == (3, 48, 72) and arr.dtype == np.float64, name
    assert p.masks.shape == (3, 48, 72) and p.masks.dtype == np.int32
    assert p.scene.shape == (48, 72) and p.scene.dtype == np.float64
    assert p.scales.shape == (3,) and p.scales.dtype == np.float64
    assert p.mask_planes == MASK_PLANES and p.mask_planes is not MASK_PLANES  # a copy
    assert MASK_PLANES is DEFAULT_MASK_PLANES  # one table for the whole package


def test_expected_mask_planes_appear(patch):
    for name in ("DETECTED", "SAT", "CR", "BAD", "EDGE", "NO_DATA"):
        assert has(patch.masks, name).any(), name
    for name in ("INTRP", "DETECTED_NEGATIVE", "SUSPECT"):
        assert not has(patch.masks, name).any(), name
    assert patch.masks.max() < 1 << (max(MASK_PLANES.values()) + 1)


def test_no_data_is_nan_and_everything_else_finite(patch):
    hole = has(patch.masks, "NO_DATA")
    assert not hole[0].any()  # the first exposure always has full coverage
    assert hole[1].any()  # the second always has a hole (spec'd, so tests can rely on it)
    assert np.isnan(patch.images[hole]).all() and np.isposinf(patch.variances[hole]).all()
    assert (patch.masks[hole] == NO_DATA).all()
    assert np.isfinite(patch.images[~hole]).all() and np.isfinite(patch.variances[~hole]).all()
    assert (patch.variances[~hole] > 0).all() and np.isfinite(patch.backgrounds).all()
    for frac in hole.mean(axis=(1, 2)):
        assert frac == 0 or 0.045 <= frac <= 0.305  # 5–30 % up to rounding to whole rows


@pytest.mark.parametrize("seed", range(8))
def test_first_exposure_always_covered_second_never_fully(seed):
    hole = has(simulate_patch(3, (32, 32), seed=seed).masks, "NO_DATA")
    assert not hole[0].any() and hole[1].any()


def test_full_coverage_only_removes_the_holes(patch):
    full = simulate_patch(coverage="full")
    assert not has(full.masks, "NO_DATA").any()
    assert np.isfinite(full.images).all() and np.isfinite(full.variances).all()
    covered = ~has(patch.masks, "NO_DATA")
    np.testing.assert_array_equal(full.images[covered], patch.images[covered])
    np.testing.assert_array_equal(full.masks[covered], patch.masks[covered])
    np.testing.assert_array_equal(full.backgrounds, patch.backgrounds)


def test_edge_is_a_two_pixel_border():
    p = simulate_patch(2, (40, 50), coverage="full", seed=4)
    expected = np.ones((40, 50), dtype=bool)
    expected[2:-2, 2:-2] = False
    for m in p.masks:
        np.testing.assert_array_equal(has(m, "EDGE"), expected)


def test_defects_can_be_switched_off():
    p = simulate_patch(3, (96, 96), cosmic_rays=False, bad_columns=False, saturation=None)
    for name in ("CR", "BAD", "SAT"):
        assert not has(p.masks, name).any(), name
    assert np.nanmax(p.images) > 6.0e4  # so with the default saturation, SAT is reachable


def test_saturated_pixels_are_clipped_and_detected(patch):
    sat = has(patch.masks, "SAT")
    assert np.nanmax(patch.images) == 6.0e4
    assert (patch.images[sat] == 6.0e4).all() and has(patch.masks[sat], "DETECTED").all()
    # saturation comes from bright stars, which are in every exposure's scene
    assert sat.reshape(len(sat), -1).any(axis=1).all()


def test_detected_follows_the_noiseless_sources():
    p = simulate_patch(coverage="full")  # finite variance everywhere
    signal = p.scales[:, None, None] * p.scene
    bright = signal > 2.0 * np.sqrt(p.variances)
    for i in range(len(p.masks)):
        # 2σ of the noiseless flux, grown by 2 pixels (a 5×5 square), plus SAT
        grown = ndimage.binary_dilation(bright[i], structure=np.ones((5, 5), dtype=bool))
        expected = grown | has(p.masks[i], "SAT")
        np.testing.assert_array_equal(has(p.masks[i], "DETECTED"), expected)
    no_sources = simulate_patch(2, (64, 64), n_stars=0, n_galaxies=0, coverage="full")
    assert (no_sources.scene == 0).all() and not has(no_sources.masks, "DETECTED").any()


def test_variance_plane_is_the_model_variance(patch):
    covered = ~has(patch.masks, "NO_DATA")
    model = patch.scales[:, None, None] * patch.scene + patch.backgrounds
    np.testing.assert_allclose(patch.variances[covered], (model / 2.0 + 25.0)[covered], rtol=1e-12)


def test_normalised_residuals_are_standard_normal(patch):
    model = patch.scales[:, None, None] * patch.scene + patch.backgrounds
    z = ((patch.images - model) / np.sqrt(patch.variances))[patch.masks == 0]
    n = z.size
    assert n > 150_000
    # 5σ bounds from the sample size: SE(mean) = 1/√n, SE(std) ≈ 1/√(2n)
    assert abs(z.mean()) < 5.0 / np.sqrt(n)
    assert abs(z.std() - 1.0) < 5.0 / np.sqrt(2.0 * n)
    assert stats.kstest(z, "norm").pvalue > 1e-4


def test_corrupted_pixels_are_not_the_model(patch):
    model = patch.scales[:, None, None] * patch.scene + patch.backgrounds
    z = (patch.images - model) / np.sqrt(patch.variances)
    assert np.abs(z[has(patch.masks, "CR")]).min() > 5.0  # CR adds ≥ 10 σ_sky
    assert np.abs(z[has(patch.masks, "BAD") & ~has(patch.masks, "NO_DATA")]).max() > 5.0


def test_backgrounds_are_smooth_and_differ():
    amplitude, sky = 20.0, 1000.0
    p = simulate_patch(5, (128, 160), seed=11, coverage="full")
    np.testing.assert_allclose(np.ptp(p.backgrounds, axis=(1, 2)), amplitude, rtol=1e-12)
    np.testing.assert_allclose(p.backgrounds.mean(axis=(1, 2)), sky, rtol=0.1)
    h, w = p.scene.shape
    # tensor-product Legendre fit of degree 8 per axis; on a full grid the
    # least-squares fit separates: diff ≈ Py Py⁺ diff (Px Px⁺)ᵀ
    py = legendre.legvander((2 * np.arange(h) + 1) / h - 1, 8)
    px = legendre.legvander((2 * np.arange(w) + 1) / w - 1, 8)
    proj_y, proj_x = py @ np.linalg.pinv(py), px @ np.linalg.pinv(px)
    for i in range(1, 5):
        diff = p.backgrounds[i] - p.backgrounds[0]
        spread = np.ptp(diff)
        assert spread > 0.1 * amplitude  # the exposures' backgrounds really differ
        # smooth: the fit leaves < 1 % of the range (white noise would leave ~100 %)
        assert np.abs(diff - proj_y @ diff @ proj_x.T).max() < 1e-2 * spread


def test_psf_width_of_an_isolated_star():
    fwhm = 4.0
    p = simulate_patch(1, (96, 96), n_stars=1, n_galaxies=0, psf_fwhm=fwhm, seed=5)
    y, x = np.unravel_index(np.argmax(p.scene), p.scene.shape)
    stamp = p.scene[y - 15 : y + 16, x - 15 : x + 16]
    yy, xx = np.mgrid[-15:16, -15:16]
    total = stamp.sum()
    var = [((c - (c * stamp).sum() / total) ** 2 * stamp).sum() / total for c in (yy, xx)]
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    # the pixel-integrated Gaussian has variance σ² + 1/12 per axis
    np.testing.assert_allclose(var, sigma**2 + 1.0 / 12.0, rtol=1e-3)


def test_scales_scatter_around_one():
    p = simulate_patch(8, (32, 32), scale_scatter=0.05, seed=6)
    assert (p.scales > 0).all() and np.abs(np.log(p.scales)).max() < 5 * 0.05
    assert np.unique(p.scales).size == 8
    np.testing.assert_array_equal(simulate_patch(3, (32, 32), scale_scatter=0.0).scales, 1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_exposures=0),
        dict(n_exposures=2.5),
        dict(shape=(4, 64)),
        dict(shape=(64,)),
        dict(n_stars=-1),
        dict(n_galaxies=1.5),
        dict(gain=0.0),
        dict(read_noise=-1.0),
        dict(background_amplitude=float("nan")),
        dict(scale_scatter=-0.1),
        dict(coverage="none"),
        dict(saturation=0.0),
        dict(psf_fwhm=0.5),
        dict(sky_level=0.0, read_noise=0.0),
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        simulate_patch(**kwargs)
