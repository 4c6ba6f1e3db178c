"""Tests of `Exposure`, `stack_exposures` and `estimate_variance`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmatch as jm
from jaxmatch._exposure import (
    DEFAULT_MASK_PLANES,
    Exposure,
    as_mask_planes,
    estimate_variance,
    stack_exposures,
)

# LSST's standard mask bits (afw `Mask` defaults), as the spec lists them.
LSST_PLANES = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
}
DETECTED = 1 << LSST_PLANES["DETECTED"]


def _exposure(rng, shape=(6, 7), dtype=np.float64, planes=None):
    image = rng.normal(size=shape).astype(dtype)
    mask = rng.integers(0, 1 << 9, size=shape, dtype=np.int32)
    variance = rng.uniform(0.5, 2.0, size=shape).astype(dtype)
    return Exposure(image, mask, variance, mask_planes=planes)


def _assert_same(a: Exposure, b: Exposure):
    for name in ("image", "mask", "variance"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
    assert a.getMaskPlaneDict() == b.getMaskPlaneDict()


# -- construction ---------------------------------------------------------------------------
def test_default_mask_planes_are_lsst_standard_bits():
    assert DEFAULT_MASK_PLANES == LSST_PLANES
    exp = Exposure(np.zeros((3, 4)), variance=np.ones((3, 4)))
    assert exp.getMaskPlaneDict() == LSST_PLANES
    assert as_mask_planes(None) == LSST_PLANES
    assert as_mask_planes({"A": 3}) == {"A": 3}


def test_default_mask_is_int32_zeros():
    exp = Exposure(np.ones((3, 4)), variance=np.ones((3, 4)))
    assert exp.mask.dtype == jnp.int32
    assert exp.mask.shape == (3, 4)
    assert not np.any(np.asarray(exp.mask))


def test_given_planes_are_kept(rng):
    image = rng.normal(size=(3, 4))
    mask = np.array([[0, 1, 2, 3]] * 3, dtype=np.int16)
    variance = np.full((3, 4), 2.5)
    exp = Exposure(image, mask, variance, mask_planes={"A": 0, "B": 1})
    np.testing.assert_array_equal(np.asarray(exp.image), image)
    np.testing.assert_array_equal(np.asarray(exp.variance), variance)
    np.testing.assert_array_equal(np.asarray(exp.mask), mask)
    assert exp.mask.dtype == jnp.int32  # any integer mask is stored as int32
    assert exp.getMaskPlaneDict() == {"A": 0, "B": 1}
    assert exp.getBBoxShape() == (3, 4)
    assert exp.batch_shape == ()


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint16, np.int64])
def test_integer_image_becomes_float(dtype):
    image = np.arange(12, dtype=dtype).reshape(3, 4)
    exp = Exposure(image, variance=np.ones((3, 4), dtype=np.float32))
    assert exp.image.dtype == jnp.float64  # float64 is on (conftest)
    np.testing.assert_array_equal(np.asarray(exp.image), image.astype(np.float64))
    assert exp.variance.dtype == exp.image.dtype  # variance follows the image's dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_image_keeps_its_dtype(dtype):
    exp = Exposure(np.ones((3, 4), dtype=dtype), variance=np.ones((3, 4)))
    assert exp.image.dtype == dtype
    assert exp.variance.dtype == dtype


def test_missing_variance_is_estimated(rng):
    image = rng.normal(0.0, 2.0, size=(4, 5))
    exp = Exposure(image)
    assert exp.variance.shape == image.shape
    np.testing.assert_array_equal(
        np.asarray(exp.variance), np.asarray(estimate_variance(image, np.zeros((4, 5), np.int32)))
    )
    assert np.all(np.asarray(exp.variance) > 0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"image": np.ones(5)}, ValueError, "2-D"),
        ({"image": np.float64(1.0)}, ValueError, "2-D"),
        ({"image": np.ones((0, 4))}, ValueError, "no pixels"),
        ({"image": np.ones((3, 4), dtype=complex)}, TypeError, "real"),
        ({"mask": np.zeros((4, 3), dtype=np.int32)}, ValueError, r"mask shape \(4, 3\)"),
        ({"mask": np.zeros((1, 4), dtype=np.int32)}, ValueError, "mask shape"),  # no broadcast
        ({"mask": np.zeros((3, 4))}, TypeError, "mask must be an integer"),
        ({"mask": np.zeros((3, 4), dtype=bool)}, TypeError, "mask must be an integer"),
        ({"variance": np.ones((3, 5))}, ValueError, r"variance shape \(3, 5\)"),
        ({"variance": np.ones(4)}, ValueError, "variance shape"),
        ({"mask_planes": {"BAD": 31}}, ValueError, "BAD"),
        ({"mask_planes": {"BAD": -1}}, ValueError, "BAD"),
        ({"mask_planes": {"BAD": 1.0}}, ValueError, "BAD"),
        ({"mask_planes": {"BAD": 0, "SAT": 0}}, ValueError, "share a bit"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, error, match):
    args = {"image": np.ones((3, 4)), "variance": np.ones((3, 4))} | kwargs
    image = args.pop("image")
    with pytest.raises(error, match=match):
        Exposure(image, **args)


# -- bitmask --------------------------------------------------------------------------------
def test_bitmask_ors_the_right_bits():
    exp = Exposure(np.ones((2, 2)), variance=np.ones((2, 2)))
    assert exp.bitmask([]) == 0
    assert exp.bitmask(["BAD"]) == 1
    assert exp.bitmask(["NO_DATA"]) == 256
    assert exp.bitmask(["SAT", "CR"]) == 0b1010
    assert exp.bitmask(("CR", "SAT", "CR")) == 0b1010  # order and repeats do not matter
    everything = exp.bitmask(list(LSST_PLANES))
    assert everything == 0x1FF
    default_bad = ["NO_DATA", "DETECTED", "DETECTED_NEGATIVE", "SAT", "BAD", "INTRP", "CR"]
    assert exp.bitmask(default_bad) == 0b1_0110_1111  # all but EDGE (4) and SUSPECT (7)


def test_bitmask_uses_the_exposures_own_planes():
    exp = Exposure(np.ones((2, 2)), variance=np.ones((2, 2)), mask_planes={"X": 3, "Y": 30})
    assert exp.bitmask(["X", "Y"]) == (1 << 3) | (1 << 30)
    with pytest.raises(ValueError, match="BAD"):
        exp.bitmask(["BAD"])


def test_bitmask_unknown_plane_raises_naming_it():
    exp = Exposure(np.ones((2, 2)), variance=np.ones((2, 2)))
    with pytest.raises(ValueError, match="NOT_A_PLANE"):
        exp.bitmask(["BAD", "NOT_A_PLANE"])
    with pytest.raises(ValueError, match="'bad'"):
        exp.bitmask(["bad"])  # names are case-sensitive


# -- batches: pytree, stacking, indexing ------------------------------------------------------
def test_batch_is_a_pytree_of_three_arrays(rng):
    batch = stack_exposures([_exposure(rng) for _ in range(3)])
    leaves = jax.tree_util.tree_leaves(batch)
    assert len(leaves) == 3
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    assert {id(leaf) for leaf in leaves} == {id(batch.image), id(batch.mask), id(batch.variance)}
    assert all(leaf.shape == (3, 6, 7) for leaf in leaves)


def test_tree_map_keeps_structure_and_planes(rng):
    planes = dict(LSST_PLANES, CUSTOM=12)
    batch = stack_exposures([_exposure(rng, planes=planes) for _ in range(2)])
    doubled = jax.tree.map(lambda x: 2 * x, batch)
    assert isinstance(doubled, Exposure)
    assert doubled.getMaskPlaneDict() == planes
    np.testing.assert_array_equal(np.asarray(doubled.image), 2 * np.asarray(batch.image))
    np.testing.assert_array_equal(np.asarray(doubled.mask), 2 * np.asarray(batch.mask))
    np.testing.assert_array_equal(np.asarray(doubled.variance), 2 * np.asarray(batch.variance))
    assert jax.tree.structure(doubled) == jax.tree.structure(batch)


def test_planes_are_static_in_the_tree_structure(rng):
    a = _exposure(rng)
    b = Exposure(a.image, a.mask, a.variance, mask_planes=dict(LSST_PLANES, CUSTOM=12))
    assert jax.tree.structure(a) != jax.tree.structure(b)


def test_vmap_over_a_function_of_a_batch(rng):
    exposures = [_exposure(rng) for _ in range(4)]
    batch = stack_exposures(exposures)

    def usable_weighted_mean(exp: Exposure):
        assert exp.image.shape == (6, 7)  # vmap hands one exposure at a time
        good = (exp.mask & exp.bitmask(["BAD", "SAT"])) == 0
        w = jnp.where(good, 1.0 / exp.variance, 0.0)
        return jnp.sum(w * exp.image) / jnp.sum(w)

    got = jax.jit(jax.vmap(usable_weighted_mean))(batch)
    expected = jnp.stack([usable_weighted_mean(e) for e in exposures])
    assert got.shape == (4,)
    # Same float64 sums, in the same order up to vectorisation: agree to rounding.
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-12)


def test_vmap_can_return_exposures(rng):
    batch = stack_exposures([_exposure(rng) for _ in range(3)])
    shifted = jax.vmap(lambda e: Exposure(e.image + 1.0, e.mask, e.variance))(batch)
    assert shifted.batch_shape == (3,)
    np.testing.assert_array_equal(np.asarray(shifted.image), np.asarray(batch.image) + 1.0)


def test_stack_and_index(rng):
    exposures = [_exposure(rng) for _ in range(3)]
    batch = stack_exposures(exposures)
    assert batch.batch_shape == (3,)
    assert len(batch) == 3
    assert batch.getBBoxShape() == (6, 7)
    for i, exp in enumerate(exposures):
        _assert_same(batch[i], exp)
        assert batch[i].batch_shape == ()
    _assert_same(batch[-1], exposures[2])
    sub = batch[1:]
    assert len(sub) == 2
    _assert_same(sub[0], exposures[1])


def test_single_exposure_has_no_len_or_index(rng):
    exp = _exposure(rng)
    with pytest.raises(TypeError):
        len(exp)
    with pytest.raises(TypeError):
        exp[0]


def test_stack_keeps_custom_planes_and_float32(rng):
    planes = {"A": 0, "B": 5}
    exposures = [_exposure(rng, dtype=np.float32, planes=planes) for _ in range(2)]
    batch = stack_exposures(exposures)
    assert batch.image.dtype == jnp.float32
    assert batch.variance.dtype == jnp.float32
    assert batch.getMaskPlaneDict() == planes
    _assert_same(batch[1], exposures[1])


def test_stack_checks_shapes_dtypes_and_planes(rng):
    a = _exposure(rng)
    with pytest.raises(ValueError, match="empty"):
        stack_exposures([])
    with pytest.raises(ValueError, match=r"exposure 1 has shape \(6, 8\)"):
        stack_exposures([a, _exposure(rng, shape=(6, 8))])
    with pytest.raises(ValueError, match="exposure 2 has dtype float32"):
        stack_exposures([a, a, _exposure(rng, dtype=np.float32)])
    with pytest.raises(ValueError, match="exposure 1 has mask planes"):
        stack_exposures([a, _exposure(rng, planes=dict(LSST_PLANES, EXTRA=9))])
    with pytest.raises(ValueError, match="exposure 1 has mask planes"):
        stack_exposures([a, _exposure(rng, planes=dict(LSST_PLANES, SUSPECT=9))])  # same names
    with pytest.raises(ValueError, match="already a batch"):
        stack_exposures([stack_exposures([a, a])])
    with pytest.raises(TypeError, match="exposure 1 is a ndarray"):
        stack_exposures([a, np.ones((6, 7))])


# -- estimate_variance -------------------------------------------------------------------------
SIGMA = 2.5
SHAPE = (256, 256)


def _noisy_field(seed):
    """Gaussian noise σ = 2.5 + smooth background + 30 bright sources (masked DETECTED)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(float)
    background = 1000.0 + 0.3 * x - 0.2 * y + 5e-4 * (x - 128.0) ** 2
    image = background + rng.normal(0.0, SIGMA, SHAPE)
    mask = np.zeros(SHAPE, dtype=np.int32)
    for _ in range(30):
        cy, cx = rng.uniform(0, SHAPE[0]), rng.uniform(0, SHAPE[1])
        r2 = (x - cx) ** 2 + (y - cy) ** 2
        image += 5000.0 * np.exp(-r2 / (2 * 3.0**2))
        mask[r2 < 15.0**2] |= DETECTED  # 5 PSF σ: the unmasked wings are < 1e-2 ADU
    return image, mask


def _tolerance(mask):
    """5 standard errors of σ̂² / σ² for the MAD estimator on `mask`'s pixel pairs.

    The MAD's asymptotic relative efficiency is 0.37, so with m independent samples
    sd(σ̂)/σ = 0.8250/√m and sd(σ̂²)/σ² = 1.650/√m. Adjacent differences share a pixel
    (correlation -1/2), so only about half of the n usable pairs count: m = n/2 (a
    simulation of 300 fields of this kind gave sd 0.0217 for n ≈ 11 850, against
    1.650/√(n/2) = 0.0214). The background curvature adds a bias of order
    (1e-3·128)² / 3 / (2σ²) ≈ 4e-4 (the spread of its x-slope), far inside the band.
    """
    good = mask == 0
    n = int(np.sum(good[:, 1:] & good[:, :-1]))
    return 5 * 1.650 / np.sqrt(n / 2), n


@pytest.mark.parametrize("seed", [0, 1])
def test_estimate_variance_recovers_sigma_squared(seed):
    image, mask = _noisy_field(seed)
    tol, n = _tolerance(mask)
    assert n > 40_000  # enough unmasked pairs for a tight band (tol ≈ 5 %)
    var = np.asarray(estimate_variance(jnp.asarray(image), jnp.asarray(mask)))
    assert var.shape == SHAPE
    assert np.all(var == var[0, 0])  # a constant plane
    assert abs(var[0, 0] / SIGMA**2 - 1.0) < tol
    # The same field with its sources left unmasked gives a badly wrong answer:
    # this shows the test exercises the masking.
    unmasked = float(estimate_variance(jnp.asarray(image), jnp.zeros(SHAPE, jnp.int32))[0, 0])
    assert unmasked / SIGMA**2 > 1.0 + 3 * tol


def test_estimate_variance_ignores_non_finite_pixels():
    image, mask = _noisy_field(2)
    clean = float(estimate_variance(jnp.asarray(image), jnp.asarray(mask))[0, 0])
    holed = image.copy()
    holed[::7, ::5] = np.nan
    holed[3, :10] = np.inf
    with_holes = float(estimate_variance(jnp.asarray(holed), jnp.asarray(mask))[0, 0])
    assert np.isfinite(with_holes)
    tol, _ = _tolerance(mask)
    assert abs(with_holes / SIGMA**2 - 1.0) < tol
    assert with_holes != clean  # the NaN pixels' pairs were really dropped


def test_estimate_variance_of_a_batch_is_per_exposure():
    (a, ma), (b, mb) = _noisy_field(0), _noisy_field(1)
    batch = estimate_variance(jnp.stack([a, 3.0 * b]), jnp.stack([ma, mb]))
    assert batch.shape == (2,) + SHAPE
    single_a = np.asarray(estimate_variance(a, ma))
    single_b = np.asarray(estimate_variance(b, mb))
    # The same medians of the same numbers: equal up to rounding.
    np.testing.assert_allclose(np.asarray(batch[0]), single_a, rtol=1e-12)
    # Scaling an image by 3 scales its estimated variance by 9 (up to rounding).
    np.testing.assert_allclose(np.asarray(batch[1]), 9 * single_b, rtol=1e-12)
    assert abs(float(batch[1, 0, 0]) / (9 * SIGMA**2) - 1.0) < _tolerance(mb)[0]


@pytest.mark.parametrize(
    "image, mask",
    [
        (np.array([[1.0], [2.0], [4.0]]), np.zeros((3, 1), np.int32)),  # no pairs at all
        (np.arange(20.0).reshape(4, 5), np.ones((4, 5), np.int32)),  # everything masked
        (np.full((4, 5), np.nan), np.zeros((4, 5), np.int32)),  # nothing finite
        (  # a single usable pair, whose MAD is 0
            np.arange(20.0).reshape(4, 5) ** 2,
            np.array([[1, 1, 1, 1, 1], [1, 0, 0, 1, 1], [1] * 5, [1] * 5], np.int32),
        ),
    ],
    ids=["width-1", "all-masked", "all-nan", "one-pair"],
)
def test_estimate_variance_is_nan_with_too_few_pixels(image, mask):
    var = np.asarray(estimate_variance(jnp.asarray(image), jnp.asarray(mask)))
    assert var.shape == image.shape
    assert np.all(np.isnan(var))


def test_estimate_variance_with_two_pairs_is_finite():
    image = np.zeros((4, 5))
    image[2, 1:4] = [0.0, 1.0, 3.0]  # the only usable pixels: Δ = 1, 2, so MAD = 0.5
    mask = np.ones((4, 5), np.int32)
    mask[2, 1:4] = 0
    var = float(estimate_variance(jnp.asarray(image), jnp.asarray(mask))[0, 0])
    expected = (1.482602218505602 * 0.5 / np.sqrt(2.0)) ** 2
    np.testing.assert_allclose(var, expected, rtol=1e-14)  # exact arithmetic up to rounding


def test_big_endian_arrays_are_accepted_everywhere():
    """astropy returns big-endian (``>f4``/``>i2``) arrays: `Exposure`,
    `stack_exposures` and `match` take them and compute as with native ones."""
    rng = np.random.default_rng(0)
    image = (100 + rng.normal(0, 1, (32, 32))).astype(">f4")
    variance = np.ones((32, 32), ">f4")
    mask = np.zeros((32, 32), ">i2")
    exp = jm.Exposure(image, mask, variance)
    assert exp.image.dtype == np.float32 and exp.mask.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(exp.image), image.astype(np.float32))
    sci = jm.Exposure((image + 3).astype(">f4"), mask, variance)
    batch = jm.stack_exposures([sci, sci])
    config = jm.MatchBackgroundsConfig(binSize=16, usePolynomial=True, order=0)
    out = jm.match(exp, batch, config)
    np.testing.assert_allclose(np.asarray(out.model.getImage()), -3.0, atol=1e-4)


def _placed(values: np.ndarray, offset: int) -> np.ndarray:
    """A copy of ``values`` whose data starts ``offset`` bytes past a 64-byte boundary."""
    buf = np.zeros(values.nbytes + 128, np.uint8)
    begin = (-buf.ctypes.data) % 64 + offset
    placed = buf[begin : begin + values.nbytes].view(values.dtype).reshape(values.shape)
    placed[...] = values
    assert placed.ctypes.data % 64 == offset
    return placed


@pytest.mark.parametrize("offset", [0, 4, 16])
@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8"])
def test_exposure_never_shares_the_callers_memory(offset, dtype):
    """NumPy planes are copied into JAX's memory once (`jax.device_put`, which
    would alias an array whose data is 64-byte aligned): whatever the alignment and
    byte order, writing to the caller's arrays afterwards changes nothing."""
    values = (np.arange(40 * 48).reshape(40, 48) % 7 + 1).astype(dtype)
    image, variance = _placed(values, offset), _placed(values, offset)
    mask = _placed(values.astype(np.int32), offset)
    exp = Exposure(image, mask, variance)
    for plane in (image, mask, variance):
        plane[...] = 0
    for name in ("image", "mask", "variance"):
        np.testing.assert_array_equal(
            np.asarray(getattr(exp, name)), values.astype(getattr(exp, name).dtype), err_msg=name
        )
