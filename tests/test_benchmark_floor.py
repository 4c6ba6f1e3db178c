"""The benchmark's workflow floor does the work it claims (benchmarks/methods.py).

`workflow_floor` bounds what the LSST-API workflow can reach, so it must not do
less than its docstring says: per science exposure, the mean of ``ref - sci``
over the pixels unmasked in both, per cell, as a piecewise-constant image. Checked
against NumPy on float32 planes as astropy returns them (big-endian) and native.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from methods import workflow_floor  # noqa: E402


def _planes(rng, side, *, sky, big_endian):
    image = (sky + rng.normal(0.0, 3.0, (side, side))).astype(np.float32)
    mask = np.where(rng.random((side, side)) < 0.05, 2, 0).astype(np.int32)
    variance = np.full((side, side), 9.0, np.float32)
    if big_endian:
        image, mask, variance = (
            a.astype(a.dtype.newbyteorder(">")) for a in (image, mask, variance)
        )
    return image, mask, variance


@pytest.mark.parametrize("big_endian", [False, True])
def test_workflow_floor_models_are_masked_cell_means(big_endian):
    rng = np.random.default_rng(5)
    side, bin_size = 64, 16
    reference = _planes(rng, side, sky=1000.0, big_endian=big_endian)
    exposures = [_planes(rng, side, sky=1000.0 + 50 * i, big_endian=big_endian) for i in range(3)]
    models = workflow_floor(reference, exposures, bin_size)
    assert len(models) == 3
    ref, ref_mask, _ = (np.asarray(a, dtype=a.dtype.newbyteorder("=")) for a in reference)
    for (sci, mask, _), model in zip(exposures, models):
        usable = (np.asarray(mask) | ref_mask) == 0
        diff = np.where(usable, ref.astype(np.float64) - np.asarray(sci, np.float64), 0.0)
        cells = (side // bin_size, bin_size, side // bin_size, bin_size)
        level = diff.reshape(cells).sum((1, 3)) / usable.reshape(cells).sum((1, 3))
        expected = np.kron(level, np.ones((bin_size, bin_size)))
        # float32 sums of ~240 differences of ~1e3-ADU values: 1e-3 ADU is 3e-4 of
        # the 3-ADU noise and 100x the rounding of such a sum.
        np.testing.assert_allclose(model, expected, atol=1e-3)
        assert model.shape == (side, side)
