"""Self-checks of the NumPy oracle (tests/oracle.py) against independent references."""

import math

import numpy as np
import oracle
import pytest
from numpy.polynomial import chebyshev as npcheb
from scipy.interpolate import CubicSpline

BAD = 1  # the "bad" mask bit used throughout


def _exposures(diff, sci=None, sci_mask=None, ref_mask=None):
    """Reference / science planes whose difference is ``diff`` (science image 0 by default)."""
    shape = diff.shape
    sci = np.zeros(shape) if sci is None else sci
    ref = sci + diff
    zeros = np.zeros(shape, dtype=np.int32)
    return (
        ref,
        zeros if ref_mask is None else ref_mask,
        np.ones(shape),
        sci,
        zeros if sci_mask is None else sci_mask,
        np.full(shape, 2.0),
    )


def _run(diff, **kwargs):
    masks = {k: kwargs.pop(k) for k in ("sci", "sci_mask", "ref_mask") if k in kwargs}
    return oracle.oracle_match(
        *_exposures(diff, **masks), bad_bits_ref=BAD, bad_bits_sci=BAD, **kwargs
    )


# ---------------------------------------------------------------- section 2
def test_cell_edges_afw_layout():
    starts, sizes = oracle.cell_edges(4200, 128)
    assert len(starts) == 33
    assert starts[0] == 0
    assert sizes.sum() == 4200
    np.testing.assert_array_equal(starts[1:], np.cumsum(sizes)[:-1])
    assert set(sizes.tolist()) == {127, 128}
    # end_i = ((i + 1) * 4200 + 16) // 33: 127, 255, 382, 509, 636, 764
    np.testing.assert_array_equal(sizes[:6], [127, 128, 127, 127, 127, 128])


@pytest.mark.parametrize("length,b", [(96, 16), (64, 16), (256, 256)])
def test_cell_edges_divisible(length, b):
    starts, sizes = oracle.cell_edges(length, b)
    np.testing.assert_array_equal(sizes, np.full(length // b, b))
    np.testing.assert_array_equal(starts, np.arange(0, length, b))
    np.testing.assert_allclose(oracle.cell_centres(starts, sizes), starts + b / 2 - 0.5)


# ---------------------------------------------------------------- section 3
def test_cell_statistic_mean_median(rng):
    for n in (7, 8):
        x = rng.normal(size=n)
        v, s, m = oracle.cell_statistic(x, "MEAN", 3.0, 2)
        assert v == pytest.approx(np.mean(x), abs=1e-15)
        assert s == pytest.approx(np.std(x, ddof=1), abs=1e-15)
        assert m == n
        v, s, m = oracle.cell_statistic(x, "MEDIAN", 3.0, 2)
        assert v == np.median(x)
        assert s == pytest.approx(np.std(x, ddof=1), abs=1e-15)
        assert m == n
    assert oracle.cell_statistic([1.0, 2.0, 10.0, 3.0], "MEDIAN", 3.0, 2)[0] == 2.5


def test_cell_statistic_meanclip_by_hand():
    # mean 20/11, sample std ~6.11: at 2 sigma the 20 goes; the +-1 set has mean 0,
    # std sqrt(10/9), and the second iteration keeps exactly that set.
    x = np.array([-1.0, 1.0] * 5 + [20.0])
    v, s, m = oracle.cell_statistic(x, "MEANCLIP", 2.0, 2)
    assert v == 0.0
    assert s == pytest.approx(math.sqrt(10.0 / 9.0), rel=1e-14)
    assert m == 10
    # at 3 sigma (cut 18.3 > 18.2) nothing is clipped
    v, s, m = oracle.cell_statistic(x, "MEANCLIP", 3.0, 2)
    assert v == pytest.approx(20.0 / 11.0, rel=1e-14) and m == 11
    # a cut keeping fewer than 2 pixels keeps the previous set
    v, s, m = oracle.cell_statistic([0.0, 10.0], "MEANCLIP", 0.1, 3)
    assert (v, m) == (5.0, 2)
    # s = 0: the set is kept
    v, s, m = oracle.cell_statistic([4.0, 4.0, 4.0], "MEANCLIP", 3.0, 2)
    assert (v, s, m) == (4.0, 0.0, 3)


# ---------------------------------------------------------------- section 5
def test_chebyshev_matrix_matches_numpy(rng):
    t = rng.uniform(-1.2, 1.2, size=50)
    for order in (0, 1, 2, 7):
        np.testing.assert_allclose(
            oracle.chebyshev_matrix(t, order), npcheb.chebvander(t, order), atol=1e-13
        )


KNOTS = np.array([3.5, 11.0, 19.5, 27.5, 36.0, 50.0])  # deliberately non-uniform


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_cardinal_basis_interpolates(degree):
    np.testing.assert_allclose(
        oracle.cardinal_basis(KNOTS, KNOTS, degree), np.eye(len(KNOTS)), atol=1e-14
    )


@pytest.mark.parametrize("degree", [1, 3])
@pytest.mark.parametrize("k", [2, 3, 6])
def test_cardinal_basis_reproduces_lines(degree, k):
    knots = KNOTS[:k]
    x = np.linspace(-20.0, 80.0, 301)  # inside and outside the knots
    basis = oracle.cardinal_basis(x, knots, degree)
    np.testing.assert_allclose(basis @ (2.5 - 0.75 * knots), 2.5 - 0.75 * x, atol=1e-11)
    np.testing.assert_allclose(basis.sum(axis=1), 1.0, atol=1e-12)


def test_cardinal_basis_single_knot_is_constant():
    for degree in (0, 1, 3):
        np.testing.assert_array_equal(oracle.cardinal_basis([-3.0, 0.0, 9.0], [4.0], degree), 1.0)


def test_cardinal_basis_degree0_boundaries():
    knots = np.array([0.0, 2.0, 6.0])
    x = np.array([-5.0, 0.9, 1.0, 1.1, 3.99, 4.0, 100.0])
    nearest = oracle.cardinal_basis(x, knots, 0).argmax(axis=1)
    np.testing.assert_array_equal(nearest, [0, 0, 1, 1, 1, 2, 2])


def test_natural_spline_matches_scipy_inside(rng):
    values = rng.normal(size=len(KNOTS))
    x = np.linspace(KNOTS[0], KNOTS[-1], 997)
    ours = oracle.cardinal_basis(x, KNOTS, 3) @ values
    ref = CubicSpline(KNOTS, values, bc_type="natural")(x)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_natural_spline_is_c2(rng):
    values = rng.normal(size=len(KNOTS))

    def f(x):
        return oracle.cardinal_basis(np.atleast_1d(x), KNOTS, 3) @ values

    h = 1e-3
    for t in KNOTS:  # interior knots and the ends (zero curvature meets the linear extension)
        pts = t + h * np.arange(-2, 3)
        fm2, fm1, f0, fp1, fp2 = f(pts)
        left = (f0 - 2 * fm1 + fm2) / h**2
        right = (fp2 - 2 * fp1 + f0) / h**2
        d1_left = (f0 - fm1) / h
        d1_right = (fp1 - f0) / h
        assert abs(left - right) < 1e-2, (t, left, right)
        assert abs(d1_left - d1_right) < 1e-3
        assert abs(f0 - (values @ (KNOTS == t))) < 1e-12


def test_difference_matrix():
    np.testing.assert_array_equal(oracle.difference_matrix(5, 2), np.diff(np.eye(5), n=2, axis=0))
    np.testing.assert_array_equal(oracle.difference_matrix(4, 1), np.diff(np.eye(4), n=1, axis=0))
    assert oracle.difference_matrix(2, 2).shape == (0, 2)
    assert oracle.difference_matrix(1, 2).shape == (0, 1)


# ---------------------------------------------------------------- polynomial fits
def _cheb_field(coef, height, width):
    v = 2.0 * (np.arange(height) + 0.5) / height - 1.0
    u = 2.0 * (np.arange(width) + 0.5) / width - 1.0
    return npcheb.chebgrid2d(v, u, coef)


@pytest.mark.parametrize("terms", ["TOTAL", "TENSOR"])
def test_chebyshev_order1_exact_with_mean(terms):
    height, width = 64, 96
    coef = np.array([[0.3, -1.2], [2.0, 0.0 if terms == "TOTAL" else 0.7]])
    diff = _cheb_field(coef, height, width)
    out = _run(diff, use_polynomial=True, order=1, chebyshev_terms=terms, bin_size=16)
    assert out["status"] == 0
    np.testing.assert_allclose(out["coefficients"], coef, atol=1e-8)
    np.testing.assert_allclose(out["model"], diff, atol=1e-8)
    assert out["matched_mse"] < 1e-16
    np.testing.assert_allclose(out["cell_weights"].mean(), 1.0)


def test_chebyshev_order3_recovered_from_cell_centres(rng):
    """MEDIAN of three pixels bracketing the (integer) cell centre is the value there."""
    height, width, b, order = 90, 120, 15, 3
    coef = np.zeros((order + 1, order + 1))
    for p in range(order + 1):
        for q in range(order + 1 - p):
            coef[p, q] = rng.normal()
    diff = _cheb_field(coef, height, width)
    sci_mask = np.full((height, width), BAD, dtype=np.int32)
    n_valid = 0
    for y0 in range(0, height, b):
        for x0 in range(0, width, b):
            block = diff[y0 : y0 + b, x0 : x0 + b]
            fc = block[7, 7]
            others = block.copy()
            others[7, 7] = np.nan
            lo = np.unravel_index(np.nanargmin(others), others.shape)
            hi = np.unravel_index(np.nanargmax(others), others.shape)
            if not (others[lo] <= fc <= others[hi]):
                continue  # the centre is a cell extremum: leave the cell masked out
            for yy, xx in ((7, 7), lo, hi):
                sci_mask[y0 + yy, x0 + xx] = 0
            n_valid += 1
    assert n_valid >= 40
    out = _run(
        diff,
        sci_mask=sci_mask,
        use_polynomial=True,
        order=order,
        bin_size=b,
        grid_statistic="MEDIAN",
    )
    assert out["status"] == 0
    assert out["effective_order"] == (order, order)
    # The ε guard (1e-10 per valid cell, §6) biases the exact solution by about
    # ε / σ_min(√w̃ B)² ≈ 1e-10 / 1e-2 relative: 1e-7 on O(1) values.
    np.testing.assert_allclose(out["model"], diff, atol=1e-7)
    np.testing.assert_allclose(out["coefficients"], coef, atol=1e-7)


def test_all_masked_science_is_no_overlap(rng):
    diff = rng.normal(size=(64, 96))
    sci = rng.normal(size=(64, 96))
    sci_mask = np.full((64, 96), BAD | 4, dtype=np.int32)
    for poly in (True, False):
        out = _run(
            diff,
            sci=sci,
            sci_mask=sci_mask,
            use_polynomial=poly,
            order=2,
            bin_size=16,
            interp_style="NATURAL_SPLINE",
        )
        assert out["status"] == 1
        np.testing.assert_array_equal(out["matched"], sci)
        assert np.all(np.isnan(out["coefficients"]))
        assert math.isnan(out["fit_rms"]) and math.isnan(out["matched_mse"])
        assert math.isnan(out["diff_im_var"])
        assert np.all(out["cell_weights"] == 0)


def test_undersampled_styles(rng):
    diff = 1.0 + 0.01 * rng.normal(size=(64, 96))

    def mask_up_to(column):
        sci_mask = np.full((64, 96), BAD, dtype=np.int32)
        sci_mask[:, :column] = 0
        return sci_mask

    # only the two leftmost cell columns hold data: mx = 2 <= order
    kwargs = dict(sci_mask=mask_up_to(32), use_polynomial=True, order=3, bin_size=16)
    out = _run(diff, undersample_style="THROW_EXCEPTION", **kwargs)
    assert out["status"] == 2
    np.testing.assert_array_equal(out["matched"], np.zeros((64, 96)))
    assert np.all(np.isnan(out["coefficients"])) and out["coefficients"].shape == (4, 4)

    out = _run(diff, undersample_style="REDUCE_INTERP_ORDER", **kwargs)
    assert out["status"] == 0 and out["effective_order"] == (1, 1)
    inactive = np.add.outer(np.arange(4), np.arange(4)) > 1
    assert np.all(out["coefficients"][inactive] == 0.0)
    assert np.all(out["coefficients"][~inactive] != 0.0)

    # LSST's re-sampling is a number of cells per axis (afw's setNxSample):
    # data in columns 0-47: m = 3, n = (3 * 16) // 4 = 12 cells of at most 8 pixels,
    # six valid cell columns > 3: fitted at full order
    out = _run(
        diff, undersample_style="INCREASE_NXNYSAMPLE", **{**kwargs, "sci_mask": mask_up_to(48)}
    )
    assert out["bin_size_used"] == 8 and out["status"] == 0
    assert out["cell_values"].shape == (12, 12) and out["effective_order"] == (3, 3)
    # data in columns 0-31: m = 2, n = 8 cells of 8 x 12 pixels, three valid cell
    # columns <= 3: still undersampled
    out = _run(diff, undersample_style="INCREASE_NXNYSAMPLE", **kwargs)
    assert out["bin_size_used"] == 12 and out["status"] == 2


def test_eager_value_errors():
    diff = np.zeros((64, 96))
    with pytest.raises(ValueError):
        _run(diff, use_polynomial=True, order=1, bin_size=80)  # short side < binSize
    with pytest.raises(ValueError):
        _run(diff, use_polynomial=True, order=4, bin_size=16)  # 4 rows of cells: order <= 3
    with pytest.raises(ValueError):
        _run(diff, interp_style="AKIMA_SPLINE", undersample_style="THROW_EXCEPTION", bin_size=16)
    out = _run(diff, interp_style="AKIMA_SPLINE", bin_size=16)  # 4 knots in y
    assert out["interp_style_used"] == "NATURAL_SPLINE" and out["status"] == 0


# ---------------------------------------------------------------- splines
@pytest.mark.parametrize("style", ["LINEAR", "NATURAL_SPLINE", "AKIMA_SPLINE"])
def test_spline_reproduces_cell_values(rng, style):
    height, width = 96, 128
    yy, xx = np.mgrid[0:height, 0:width]
    diff = 1.0 + 0.5 * np.sin(xx / 40.0) + 0.3 * np.cos(yy / 30.0)
    diff = diff + 0.01 * rng.normal(size=diff.shape)
    out = _run(diff, interp_style=style, bin_size=16, roughness=0.0)
    assert out["status"] == 0 and out["interp_style_used"] == style
    assert out["coefficients"].shape == (6, 8)
    np.testing.assert_allclose(out["coefficients"], out["cell_values"], atol=1e-5)
    assert not np.array_equal(out["coefficients"], out["cell_values"])  # lambda_floor acts
    np.testing.assert_allclose(out["cell_weights"].mean(), 1.0)
    np.testing.assert_allclose(out["matched"], out["model"])  # science image is 0
    assert out["fit_rms"] < 0.01 and out["matched_mse"] < 3e-4
    assert out["diff_im_var"] == pytest.approx(3.0)
