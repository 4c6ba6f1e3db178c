"""`MatchBackgroundsTask.run` in chunks, and how its warnings name exposures.

1. ``run`` with ``task.chunkSize = k`` equals ``run`` with ``None`` (one call):
   the chosen reference, every fit's success or failure (and its warning), the
   diagnostics, the models and the matched exposures, in float64 and float32.
2. Each engine call sees at most ``chunkSize`` exposures, and every call of a run
   has one length (the last chunk padded): one compilation per run.
3. Warnings name each exposure by its place in ``expRefList`` and its file or
   data ID, never ``<Exposure (H, W)>``.

Small images (64 x 80, binSize 13) and a handful of exposures keep it fast.
"""

import logging

import numpy as np
import pytest
from helpers import make_pair_batch

import jaxmatch._task as task_module
import jaxmatch._taskpath as taskpath
from jaxmatch import Exposure, MatchBackgroundsConfig, MatchBackgroundsTask
from jaxmatch._taskpath import DEFAULT_CHUNK_SIZE, chunk_length

SHAPE = (64, 80)
DATASET = "deepCoadd_tempExp"
# binSize 13 (5 x 7 cells, the last ones partial): a program no other test compiles.
# Chebyshev compiles faster than the splines; the chunking is the same for every model.
CONFIG = MatchBackgroundsConfig(binSize=13, usePolynomial=True, order=2, gridStatistic="MEANCLIP")


# Each exposure's fit does not depend on the others in its call; only the batch
# length of the compiled program differs and XLA may then order a sum
# differently (7 vs 3). Data: sky 100 ADU, noise sigma 1 ADU, models ~10 ADU.
TOL = {
    # float64: a few ulps of O(1e2) values (seen: bit-equal on this machine).
    "float64": dict(rtol=1e-12, atol=1e-10),
    # float32: a few ulps: ~1e-5 ADU on the O(1e2) sky (1e-5 of sigma); seen 6e-7
    # relative on fitRMS; 2e-3 ADU on the masked -1e4 ADU pixels of matched images.
    "float32": dict(rtol=2e-6, atol=1e-4),
}


def _exposures(rng, n, dtype=np.float64):
    """A reference and ``n`` science exposures with defects; exposure 3 is all NaN
    (its fit fails: no usable pixel)."""
    ref, sci, _ = make_pair_batch(rng, SHAPE, n_sci=n)
    scis = [sci[k] for k in range(n)]
    scis[3] = Exposure(np.full(SHAPE, np.nan), np.asarray(scis[3].mask), np.ones(SHAPE))
    cast = lambda e: Exposure(  # noqa: E731
        np.asarray(e.image, dtype),
        np.asarray(e.mask),
        np.asarray(e.variance, dtype),
        mask_planes=e.getMaskPlaneDict(),
    )
    return [cast(e) for e in [scis[0], ref, *scis[1:]]]


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _run(task, exposures, caplog, chunk_size):
    caplog.clear()
    task.chunkSize = chunk_size
    with caplog.at_level(logging.WARNING):
        result = task.run(exposures, DATASET)
    return result, _messages(caplog)


# -- 1, 2. chunked == one call, one compilation ------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chunked_run_equals_one_call_and_compiles_once(rng, caplog, monkeypatch, dtype):
    exposures = _exposures(rng, 7, dtype)  # the reference + 7 science, one all NaN
    config = CONFIG if dtype == np.float64 else CONFIG.replace(dtype="float32")
    task = MatchBackgroundsTask(config)
    one, said_one = _run(task, exposures, caplog, None)

    calls, traces = [], []
    real_match_list, real_match_sequence = task_module.match_list, taskpath.match_sequence

    def spy_list(reference, group, config, **kwargs):
        calls.append((len(group), kwargs["pad_to"]))
        return real_match_list(reference, group, config, **kwargs)

    def spy_sequence(*args):
        traces.append(len(args[1]))  # runs only when the program is traced
        return real_match_sequence(*args)

    monkeypatch.setattr(task_module, "match_list", spy_list)
    monkeypatch.setattr(taskpath, "match_sequence", spy_sequence)
    chunked, said_chunked = _run(task, exposures, caplog, 3)
    # 7 science exposures, at most 3 per call: 3 calls balanced to 3, 3, 1 → padded to 3
    assert calls == [(3, 3), (3, 3), (1, 3)]
    assert traces == [3]  # one compilation serves the three calls (binSize 13: new here)

    assert chunked.refIndex == one.refIndex == 1  # chosen by the cost, not given
    assert said_chunked == said_one
    assert len(said_one) == 1 and "expRefList[4] (Exposure 64x80)" in said_one[0]
    tol = TOL[np.dtype(dtype).name]
    for i, (a, b) in enumerate(zip(one.backgroundInfoList, chunked.backgroundInfoList)):
        assert a.isReference == b.isReference
        assert (a.backgroundModel is None) == (b.backgroundModel is None), i
        if a.backgroundModel is None:  # the reference (itself) or a failure (None)
            expected = exposures[i] if a.isReference else None
            assert chunked.matchedExposureList[i] is one.matchedExposureList[i] is expected
            continue
        for name in ("fitRMS", "matchedMSE", "diffImVar"):
            np.testing.assert_allclose(getattr(b, name), getattr(a, name), **tol, err_msg=name)
        np.testing.assert_allclose(
            b.backgroundModel.coefficients, a.backgroundModel.coefficients, **tol
        )
        np.testing.assert_allclose(
            b.backgroundModel.getImage(), a.backgroundModel.getImage(), **tol
        )
        ma, mb = one.matchedExposureList[i], chunked.matchedExposureList[i]
        assert mb.image.dtype == exposures[i].image.dtype
        np.testing.assert_allclose(mb.image, ma.image, **tol)
        np.testing.assert_array_equal(mb.mask, exposures[i].mask)
    assert sum(info.backgroundModel is None for info in one.backgroundInfoList) == 2


def test_chunk_length_is_balanced_and_bounded():
    assert chunk_length(20, 16) == 10  # 2 calls of 10, not 16 + 4 padded to 16
    assert chunk_length(16, 16) == 16
    assert chunk_length(5, None) == 5
    assert chunk_length(3, DEFAULT_CHUNK_SIZE) == 3  # small lists: one call, no padding
    for n in range(1, 60):
        for k in range(1, 20):
            c = chunk_length(n, k)
            calls = -(-n // c)
            assert c <= k and calls == -(-n // k)  # as few calls as chunks of k need
            assert calls * c - n < calls  # padding: fewer than one exposure per call


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "4"])
def test_bad_chunk_size_is_refused_naming_it(rng, bad):
    exposures = _exposures(rng, 4)
    task = MatchBackgroundsTask(CONFIG)
    assert task.chunkSize == DEFAULT_CHUNK_SIZE == 16
    # refused when set, as a config field is (the task keeps its value)
    with pytest.raises(ValueError, match="chunkSize must be a positive integer"):
        task.chunkSize = bad
    assert task.chunkSize == 16
    task.chunkSize = 3
    assert task.chunkSize == 3
    assert len(task.run(exposures, DATASET).backgroundInfoList) == len(exposures)
    assert MatchBackgroundsTask(CONFIG).chunkSize == 16  # set on one task, not the class


def test_cli_default_chunk_size_is_the_tasks():
    from jaxmatch.cli import _parser

    args = _parser().parse_args(["match", "x.fits", "--out", "o"])
    assert args.chunk_size == DEFAULT_CHUNK_SIZE


# -- 3. names in warnings -------------------------------------------------------------
class _Handle:
    """A Butler-like deferred handle: ``get`` and a ``dataId``."""

    def __init__(self, exposure, visit):
        self.exposure, self.dataId = exposure, {"visit": visit, "band": "r"}

    def get(self, datasetType):
        return self.exposure


def test_warnings_name_the_place_and_the_file_or_data_id(rng, caplog, tmp_path):
    from jaxmatch.io import writeExposure

    exposures = _exposures(rng, 4)  # [sci0, ref, sci1, sci2, NaN, ...]
    odd = Exposure(np.ones((32, 32)))  # another shape: refused before any fit
    path = tmp_path / "visite é 7.fits"
    writeExposure(exposures[4], path)  # the all-NaN exposure, from a file
    refs = [exposures[0], exposures[1], odd, _Handle(exposures[4], 912), str(path)]
    task = MatchBackgroundsTask(CONFIG)
    with caplog.at_level(logging.WARNING):
        task.run(refs, DATASET, refExpDataRef=exposures[1])
    said = "\n".join(_messages(caplog))
    assert "<Exposure" not in said
    assert (
        "Failed to fit background expRefList[2] (Exposure 32x32): Exposures are different"
        in said
    )
    assert "Failed to fit background expRefList[3] (dataId {'visit': 912, 'band': 'r'}):" in said
    assert f"Failed to fit background expRefList[4] ({path}):" in said
    assert "expRefList[0]" not in said  # fitted: nothing to say
