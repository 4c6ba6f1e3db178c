"""LSST's own unit tests of ``MatchBackgroundsTask``, ported to jaxmatch.

The 18 tests of ``lsst/pipe_tasks`` ``tests/test_matchBackgrounds.py`` (Gen2 era),
with afw replaced by NumPy:

- ``afwImage.ExposureF(600, 600)`` with ``afwMath.randomGaussianImage`` → a float32
  `Exposure` of seeded standard-normal noise (NumPy's generator in place of afw's
  MT19937 stream: the same distribution, other values), variance plane 1;
- NaN chip gaps and low coverage written into the image, as LSST does;
- SAT-masked hot pixels set through the ``SAT`` bit of the mask plane;
- ``afwMath.makeStatistics(..., MEAN | VARIANCE, sctrl)`` → mean and sample
  variance over the finite pixels that have none of the bad mask planes set.

The task is used as LSST's tests use it: ``task.config.<field> = value`` between
calls, ``task.matchBackgrounds(ref, sci)`` modifying ``sci`` in place, free
attributes set on the task. LSST's assertions, tolerances and expected exception
classes are kept. The images keep LSST's 600 x 600 pixels (the tests' bin sizes
and orders are chosen for that size).
"""

import unittest

import numpy as np

from jaxmatch import Exposure, MatchBackgroundsTask
from jaxmatch._config import DEFAULT_BAD_MASK_PLANES
from jaxmatch._exposure import DEFAULT_MASK_PLANES

SIZE = 600


def gaussian_exposure(seed: int, level: float, shape=(SIZE, SIZE)) -> Exposure:
    """Unit-variance noise around ``level`` (float32), variance plane 1, empty mask."""
    noise = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return Exposure(noise + np.float32(level), variance=np.ones(shape, np.float32))


def copy_exposure(exposure: Exposure) -> Exposure:
    """A deep copy (afw's ``ExposureF(other, True)``)."""
    return Exposure(
        np.array(exposure.image),
        np.array(exposure.mask),
        np.array(exposure.variance),
        mask_planes=exposure.getMaskPlaneDict(),
    )


def with_image(exposure: Exposure, image: np.ndarray) -> Exposure:
    return Exposure(
        image.astype(np.float32),
        np.array(exposure.mask),
        np.array(exposure.variance),
        mask_planes=exposure.getMaskPlaneDict(),
    )


def ramp(exposure: Exposure, seed: int) -> Exposure:
    """New noise plus the plane ``1 · x + 2 · y`` (LSST's testRamp* images)."""
    y, x = np.mgrid[:SIZE, :SIZE]
    noise = np.random.default_rng(seed).standard_normal((SIZE, SIZE))
    return with_image(exposure, noise + 1.0 * x + 2.0 * y + 0.0)


def with_hot_pixels(exposure: Exposure) -> Exposure:
    """+10 everywhere, and ten SAT-masked pixels of 65000 at x = 5, y = 0, 20, ..., 180."""
    image, mask = np.array(exposure.image) + 10, np.array(exposure.mask)
    sat = 1 << DEFAULT_MASK_PLANES["SAT"]
    rows = np.arange(0, 200, 20)
    mask[rows, 5] = sat
    image[rows, 5] = 65000
    return Exposure(image, mask, np.array(exposure.variance), mask_planes=DEFAULT_MASK_PLANES)


def statistics(exposure: Exposure) -> tuple[float, float]:
    """Mean and variance over finite pixels without a bad mask plane (afw's sctrl)."""
    bits = exposure.bitmask(DEFAULT_BAD_MASK_PLANES)
    image = np.asarray(exposure.image, np.float64)
    good = np.isfinite(image) & ((np.asarray(exposure.mask) & bits) == 0)
    return float(image[good].mean()), float(image[good].var(ddof=1))


class MatchBackgroundsTestCase(unittest.TestCase):
    """Background Matching (LSST's test case)."""

    def setUp(self):
        self.rng = np.random.default_rng(1)
        # 1) full coverage, mean 50
        self.vanilla = gaussian_exposure(1, 50)
        # 2) a 100-pixel chip gap (NaN columns), mean 10
        image = np.array(gaussian_exposure(2, 10).image)
        image[:, 200:300] = np.nan
        self.chipGap = with_image(self.vanilla, image)
        # 3) low coverage (NaN right of x = 200), mean 20
        image = np.array(gaussian_exposure(3, 20).image)
        image[:, 200:] = np.nan
        self.lowCover = with_image(self.vanilla, image)

        self.matcher = MatchBackgroundsTask()
        self.matcher.config.usePolynomial = True
        self.matcher.binSize = 64  # as LSST's test: a plain attribute, not the config
        self.matcher.debugDataIdString = "Test Visit"

    def checkAccuracy(self, refExp, sciExp):
        """Match, then compare the matched image's mean with the reference's and the
        matched MSE with the difference image's variance (LSST's two checks)."""
        struct = self.matcher.matchBackgrounds(refExp, sciExp)
        resultMean, resultVar = statistics(sciExp)  # sciExp was matched in place
        refMean, _ = statistics(refExp)
        self.assertAlmostEqual(refMean, resultMean, delta=resultVar)  # very loose test
        # MSE within 1% of the variance of the difference image: success
        self.assertLess(struct.matchedMSE, struct.diffImVar * 1.01)

    # -- polynomial fit (LSST's afw Approximate) -----------------------------------------
    def testConfig(self):
        """binSize larger than the image, and order above the bins - 1, raise ValueError."""
        for size in range(601, 1000, 100):
            self.matcher.config.binSize = size
            self.assertRaises(ValueError, self.matcher.matchBackgrounds, self.chipGap, self.vanilla)
        # 600 x 600 with binSize 256: a 3 x 3 grid, so order 3 and above fail
        self.matcher.config.binSize = 256
        for order in range(3, 8):
            self.matcher.config.order = order
            self.assertRaises(ValueError, self.matcher.matchBackgrounds, self.chipGap, self.vanilla)
        for size, order in [(600, 0), (300, 1), (200, 2), (100, 5)]:
            self.matcher.config.binSize = size
            self.matcher.config.order = order
            self.checkAccuracy(self.chipGap, self.vanilla)

    def testInputParams(self):
        """Exposures of different dimensions raise RuntimeError."""
        self.matcher.config.binSize = 128
        self.matcher.config.order = 2
        wrongSize = Exposure(
            np.ones((500, 500), np.float32), variance=np.ones((500, 500), np.float32)
        )
        self.assertRaises(RuntimeError, self.matcher.matchBackgrounds, self.chipGap, wrongSize)

    def testVanillaApproximate(self):
        self.matcher.config.binSize = 128
        self.matcher.config.order = 4
        self.checkAccuracy(self.chipGap, self.vanilla)

    def testRampApproximate(self):
        self.matcher.config.binSize = 64
        self.checkAccuracy(ramp(self.vanilla, 11), self.vanilla)

    def testLowCoverThrowExpectionApproximate(self):
        """THROW_EXCEPTION with too little coverage raises ValueError."""
        self.matcher.config.binSize = 64
        self.matcher.config.order = 8
        self.matcher.config.undersampleStyle = "THROW_EXCEPTION"
        self.assertRaises(ValueError, self.matcher.matchBackgrounds, self.chipGap, self.lowCover)

    def testLowCoverIncreaseSampleApproximate(self):
        """INCREASE_NXNYSAMPLE re-fits the low-coverage exposure on more cells."""
        self.matcher.config.binSize = 128
        self.matcher.config.order = 4
        self.matcher.config.undersampleStyle = "INCREASE_NXNYSAMPLE"
        self.checkAccuracy(self.chipGap, self.lowCover)

    def testLowCoverReduceInterpOrderApproximate(self):
        self.matcher.config.binSize = 64
        self.matcher.config.order = 8
        self.matcher.config.undersampleStyle = "REDUCE_INTERP_ORDER"
        self.checkAccuracy(self.chipGap, self.lowCover)

    def testMasksApproximate(self):
        """SAT-masked hot pixels do not enter the fit."""
        testExp = with_hot_pixels(copy_exposure(self.chipGap))
        self.matcher.config.binSize = 128
        self.matcher.config.order = 4
        self.checkAccuracy(self.chipGap, testExp)

    def testWeightsByInvError(self):
        """Bins with a high standard deviation and few pixels weigh less in the fit."""
        self.matcher.config.binSize = 60
        self.matcher.config.order = 4
        image = np.array(self.chipGap.image)
        corner = self.rng.random((50, 50))
        values = self.rng.random((50, 50)) * 1000
        image[:50, :50] = np.where(corner < 0.6, np.nan, values)
        testExp = with_image(self.chipGap, image)
        self.matcher.matchBackgrounds(self.vanilla, testExp)
        result = np.asarray(testExp.image, np.float64)[60:, 60:]
        result = result[~np.isnan(result)]
        self.assertAlmostEqual(50, result.mean(), delta=result.std() ** 2)  # very loose test

    def testSameImageApproximate(self):
        self.matcher.config.binSize = 128
        self.matcher.config.order = 4
        self.checkAccuracy(self.vanilla, copy_exposure(self.vanilla))

    # -- spline fit (LSST's afw Background) ------------------------------------------------
    def testVanillaBackground(self):
        self.matcher.config.usePolynomial = False
        self.matcher.config.binSize = 128
        self.checkAccuracy(self.chipGap, self.vanilla)

    def testRampBackground(self):
        self.matcher.config.usePolynomial = False
        self.matcher.config.binSize = 64
        self.checkAccuracy(ramp(self.vanilla, 12), self.vanilla)

    def testUndersampleBackgroundPasses(self):
        """3 x 3 bins: REDUCE_INTERP_ORDER passes; INCREASE_NXNYSAMPLE, which the spline
        background does not support, raises RuntimeError."""
        self.matcher.config.usePolynomial = False
        self.matcher.config.binSize = 256
        self.matcher.config.undersampleStyle = "REDUCE_INTERP_ORDER"
        self.checkAccuracy(self.chipGap, self.vanilla)
        self.matcher.config.undersampleStyle = "INCREASE_NXNYSAMPLE"
        self.assertRaises(RuntimeError, self.matcher.matchBackgrounds, self.chipGap, self.vanilla)

    def testSameImageBackground(self):
        self.matcher.config.usePolynomial = False
        self.matcher.config.binSize = 256
        self.checkAccuracy(self.vanilla, self.vanilla)

    def testMasksBackground(self):
        self.matcher.config.usePolynomial = False
        self.matcher.config.binSize = 256
        testExp = with_hot_pixels(copy_exposure(self.chipGap))
        self.checkAccuracy(self.chipGap, testExp)

    def testChipGapHorizontalBackground(self):
        """A horizontal chip gap (NaN rows)."""
        self.matcher.config.usePolynomial = False
        self.matcher.config.binSize = 64
        image = np.array(gaussian_exposure(13, 10).image)
        image[200:300, :] = np.nan
        self.checkAccuracy(self.vanilla, with_image(self.vanilla, image))

    def testChipGapVerticalBackground(self):
        """A vertical chip gap wider than a bin."""
        self.matcher.config.usePolynomial = False
        self.matcher.config.binSize = 64
        self.checkAccuracy(self.chipGap, self.vanilla)

    def testLowCoverBackground(self):
        """An exposure that does not cover the whole patch."""
        self.matcher.config.usePolynomial = False
        self.matcher.config.binSize = 64
        self.checkAccuracy(self.vanilla, self.lowCover)


if __name__ == "__main__":
    unittest.main()


# -- the behaviours behind the two tests above, at a smaller scale ----------------------
import pytest  # noqa: E402

import jaxmatch as jm  # noqa: E402
from jaxmatch._exceptions import (  # noqa: E402
    FieldValidationError,
    JaxmatchError,
    MatchFailedError,
    UndersampledError,
)


def test_exception_classes_are_both_of_lsst_classes():
    for cls in (UndersampledError, MatchFailedError):
        assert issubclass(cls, RuntimeError) and issubclass(cls, ValueError)
        assert issubclass(cls, JaxmatchError)
    assert issubclass(FieldValidationError, ValueError)


@pytest.mark.parametrize("style", ["THROW_EXCEPTION", "INCREASE_NXNYSAMPLE"])
def test_spline_undersampling_is_caught_by_lsst_except_clauses(style):
    """48 x 48 pixels, binSize 16: 3 x 3 knots cannot carry AKIMA_SPLINE (5 needed)."""
    ref, sci = gaussian_exposure(1, 5, (48, 48)), gaussian_exposure(2, 0, (48, 48))
    config = jm.MatchBackgroundsConfig(binSize=16, undersampleStyle=style)
    task = MatchBackgroundsTask(config)
    for caught in (RuntimeError, ValueError):  # LSST: RuntimeError (afw); before: ValueError
        with pytest.raises(caught, match="too few") as info:
            task.matchBackgrounds(ref, sci)
        assert isinstance(info.value, UndersampledError)
    with pytest.raises(UndersampledError):
        jm.match(ref, sci, config)


def test_failed_fit_is_caught_by_lsst_except_clauses():
    """No overlap (the science exposure is all NaN) fails the fit."""
    ref = gaussian_exposure(1, 5, (64, 64))
    sci = jm.Exposure(np.full((64, 64), np.nan, np.float32), variance=np.ones((64, 64)))
    config = jm.MatchBackgroundsConfig(binSize=16, interpStyle="LINEAR", dtype="float32")
    for caught in (RuntimeError, ValueError):
        with pytest.raises(caught, match="no overlap") as info:
            jm.match(ref, sci, config)
        assert isinstance(info.value, MatchFailedError)


def test_increase_nxnysample_refits_on_a_number_of_cells():
    """LSST hands ``(m · binSize) // (order + 1)`` to afw's setNxSample/setNySample: a
    number of cells. 96 x 96 pixels, binSize 32 (3 cells), order 2, data only at
    x < 40: m = 2 <= 2, so the re-fit uses (2 · 32) // 3 = 21 cells per axis (cells of
    4-5 pixels, 9 with data). As a bin size, 21 pixels would leave 2 valid columns
    and stay undersampled. The result equals the NumPy oracle's, whose grid has 21
    cells."""
    from helpers import oracle_of

    rng = np.random.default_rng(4)
    y, x = np.mgrid[:96, :96]
    ref_image = rng.standard_normal((96, 96)) + 0.02 * x - 0.01 * y
    sci_image = rng.standard_normal((96, 96))
    sci_image[:, 40:] = np.nan
    ref, sci = jm.Exposure(ref_image), jm.Exposure(sci_image)
    config = jm.MatchBackgroundsConfig(
        usePolynomial=True, order=2, binSize=32, undersampleStyle="INCREASE_NXNYSAMPLE"
    )
    result = jm.match(ref, sci, config)
    assert int(result.status[0]) == 0 and int(result.min_sampled[0]) == 9  # new grid
    assert int(result.bin_size[0]) == 5  # 21 cells on 96 pixels: sides of 4 and 5
    assert tuple(np.asarray(result.effective_order[0])) == (2, 2)  # the full order
    expected = oracle_of(ref, sci, config)
    assert expected["status"] == 0 and expected["bin_size_used"] == 5
    # float64 both; the oracle solves by lstsq, the engine by QR (tests/test_match.py)
    np.testing.assert_allclose(result.model[0].getImage(), expected["model"], 1e-9, 1e-9)
    np.testing.assert_allclose(result.fitRMS[0], expected["fit_rms"], 1e-9, 1e-9)


def test_cell_count_grid_layout():
    from jaxmatch._binning import cell_edges
    from jaxmatch._resample import CellCount, fit_edges, lsst_sample_count

    assert lsst_sample_count(np.array([2]), 128, 4).tolist() == [51]  # LSST's numbers
    for length, n in [(600, 51), (96, 21), (7, 7), (100, 1)]:
        starts, sizes = fit_edges(length, CellCount(n))
        assert len(starts) == n and sizes.sum() == length and sizes.min() >= 1
        assert np.array_equal(starts[1:], np.cumsum(sizes)[:-1])
        assert sizes.max() - sizes.min() <= 1  # afw's nearly equal cells
    for length, b in [(600, 64), (75, 15), (90, 16)]:  # n = ceil(L / b): cell_edges' grid
        n = -(-length // b)
        for got, want in zip(fit_edges(length, CellCount(n)), cell_edges(length, b)):
            assert np.array_equal(got, want)
        for got, want in zip(fit_edges(length, b), cell_edges(length, b)):  # a bin size
            assert np.array_equal(got, want)
    with pytest.raises(ValueError):
        fit_edges(10, CellCount(11))  # more cells than pixels
    with pytest.raises(ValueError):
        CellCount(0)
