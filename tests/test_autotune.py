"""Self-tuning in one call: the held-out cell criterion and `autotune`.

Scenes are small (≤ 128², 3 exposures) with a known best setting; the truth is
used only to check the choice, never by the tuning.
"""

import json

import numpy as np
import pytest
from helpers import oracle_of

import jaxmatch as jm
from jaxmatch._autotune import candidate_settings, default_cell_size
from jaxmatch._sources import Detection


def _scene(truth_fn, n=3, size=128, sigma=4.0, seed=0, dtype=np.float64):
    """Exposure 0 flat; exposure i has background ``truth_fn(i, y, x)`` plus noise σ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    exps, backgrounds = [], []
    for i in range(n):
        bg = np.zeros((size, size)) if i == 0 else truth_fn(i, y, x)
        backgrounds.append(bg)
        image = 100 + bg + rng.normal(0, sigma, (size, size))
        exps.append(
            jm.Exposure(image.astype(dtype), variance=np.full((size, size), sigma**2, dtype))
        )
    return jm.stack_exposures(exps), np.stack(backgrounds)


def _truth_error(batch, backgrounds, config):
    """Worst exposure's RMS model error vs the truth [ADU] (reference 0), from the
    NumPy oracle (tests/oracle.py, equal to `jaxmatch.match` to rounding): the brute
    force over every setting then compiles nothing."""
    ref = batch[0]
    errors = []
    for k in range(1, batch.image.shape[0]):
        out = oracle_of(ref, batch, config, k)
        truth = backgrounds[0] - backgrounds[k]
        errors.append(np.sqrt(np.mean((out["model"] - truth) ** 2)))
    return float(max(errors))


def _polynomial(i, y, x):  # total order 3: order 2 cannot represent it
    a = 6.0 * i
    return a * (x**3 - 0.8 * y**3 + 1.2 * x * y * y - 0.5 * x + 0.3 * y)


def _waves(i, y, x):  # one period across the side: half-side bins are too coarse
    return 2.0 * np.sin(2 * np.pi * (x + 0.3 * i)) * np.cos(2 * np.pi * (0.75 * y + 0.2 * i))


def test_heldout_cell_loss_is_near_one_at_the_truth_and_grows_when_underfitting():
    """With a model that can represent the truth, held-out cells are predicted to
    within their noise (L ≈ 1: the excess is the fit's own variance); a model too
    rigid for it leaves a large excess. The loss is comparable across binSizes."""
    batch, _ = _scene(_polynomial, seed=1)
    cheb = jm.MatchBackgroundsConfig(usePolynomial=True, binSize=32, gridStatistic="MEANCLIP")
    good = float(jm.heldout_cell_loss(batch, cheb.replace(order=3), reference=0))
    rigid = float(jm.heldout_cell_loss(batch, cheb.replace(order=1), reference=0))
    assert 0.8 < good < 1.4
    assert rigid > good + 0.25
    # the same order with other bins scores on the same cells: close to the same value
    other_bins = float(jm.heldout_cell_loss(batch, cheb.replace(order=3, binSize=16), reference=0))
    assert abs(other_bins - good) < 0.2


def test_autotune_chooses_the_known_order_and_records_every_candidate():
    """Backgrounds of total order 3 (8 x 8 bins): the tuning must not stop below
    order 3, and its choice is within 10% (+ a noise margin) of the brute-force best
    by the truth."""
    batch, truth = _scene(_polynomial, n=2, size=96, seed=2)
    # MEANCLIP from the start: stage 0 is a stage-1 candidate (one compilation less;
    # a start with its own statistic is recorded apart: the budget test below)
    start = jm.MatchBackgroundsConfig(
        usePolynomial=True, order=2, binSize=12, gridStatistic="MEANCLIP"
    )
    result = jm.autotune(
        batch,
        start,
        reference=0,
        bin_sizes=(12,),
        orders=(1, 2, 3, 5),
        roughness=(0.0,),
        num_sigma_clip=(3.0,),
        budget_s=600,
    )
    assert result.complete
    assert result.config.usePolynomial and result.config.order >= 3
    losses = [c.loss for c in result.candidates]
    assert losses == sorted(losses) and result.loss == losses[0]
    assert result.default_loss is not None and result.default_loss > result.loss
    assert {c.order for c in result.candidates} == {1, 2, 3, 5}
    assert len(result.candidates) == 4  # each order once (the start is order 2)
    errors = {
        (c.order, c.splineRoughness, c.gridStatistic): _truth_error(
            batch,
            truth,
            start.replace(
                order=c.order, splineRoughness=c.splineRoughness, gridStatistic=c.gridStatistic
            ),
        )
        for c in result.candidates
    }
    chosen = _truth_error(batch, truth, result.config)
    assert chosen <= 1.1 * min(errors.values()) + 0.01  # 0.01 ADU = 0.0025 σ
    assert "order" in result.summary()


def test_autotune_spline_picks_bins_that_resolve_the_structure():
    """Waves of half the side: 48-pixel bins (2 per side) cannot follow them; the
    choice must be finer, and as good as the brute-force best within 10%."""
    batch, truth = _scene(_waves, n=2, size=96, seed=3)
    # MEANCLIP from the start: stage 0 is then a stage-1 candidate (one compilation less)
    start = jm.MatchBackgroundsConfig(
        binSize=48, interpStyle="NATURAL_SPLINE", gridStatistic="MEANCLIP"
    )
    result = jm.autotune(
        batch,
        start,
        reference=0,
        bin_sizes=(12, 24, 48),
        roughness=(0.0, 10.0),
        num_sigma_clip=(3.0,),
        budget_s=600,
    )
    assert result.config.binSize < 48
    errors = [
        _truth_error(
            batch,
            truth,
            start.replace(
                binSize=c.binSize, splineRoughness=c.splineRoughness, gridStatistic=c.gridStatistic
            ),
        )
        for c in result.candidates
    ]
    chosen = _truth_error(batch, truth, result.config)
    assert chosen <= 1.1 * min(errors) + 0.01
    assert chosen < 0.5 * _truth_error(batch, truth, start)


def test_autotune_budget_stops_the_search_and_the_first_candidate_always_runs():
    batch, _ = _scene(_waves, n=2, size=64, seed=4)
    start = jm.MatchBackgroundsConfig(binSize=32, interpStyle="LINEAR")
    result = jm.autotune(
        batch,
        start,
        reference=0,
        bin_sizes=(16, 32),
        roughness=(0.0,),
        num_sigma_clip=(3.0,),
        budget_s=1e-6,
    )
    assert not result.complete
    # the start config (its own MEAN statistic) ran, nothing after it
    assert len(result.candidates) == 1
    assert result.config == start and result.loss == result.default_loss
    with pytest.raises(ValueError, match="budget_s"):
        jm.autotune(batch, start, budget_s=0)
    with pytest.raises(ValueError, match="roughness"):
        jm.autotune(batch, start, roughness=(-1.0,))
    with pytest.raises(ValueError, match="at least 2"):
        jm.autotune(batch[np.array([0])], start)


def test_heldout_cell_loss_float32_matches_float64():
    """float32 data give the float64 loss to 1e-3 relative: L ≈ 1 is a mean of χ²
    over ~100 cells, each a difference of ~100-pixel means whose float32 rounding
    (~1e-7 × 100 ADU = 1e-5 ADU) is far below the cell noise (4 ADU / 16 = 0.25)."""
    b64, _ = _scene(_waves, n=2, size=64, seed=5)
    b32, _ = _scene(_waves, n=2, size=64, seed=5, dtype=np.float32)
    config = jm.MatchBackgroundsConfig(binSize=16, gridStatistic="MEANCLIP")
    l64 = np.asarray(jm.heldout_cell_loss(b64, config, reference=0, roughness=[0.0, 10.0]))
    l32 = np.asarray(
        jm.heldout_cell_loss(
            b32, config.replace(dtype="float32"), reference=0, roughness=[0.0, 10.0]
        )
    )
    assert l32.dtype == np.float32
    np.testing.assert_allclose(l32, l64, rtol=1e-3)


def test_global_mode_autotune_and_task_tune():
    """GLOBAL mode: the same one call scores the joint solve on every pair's cells;
    task.tune returns a new task with the chosen config."""
    batch, _ = _scene(_waves, size=96, seed=6)
    start = jm.MatchBackgroundsConfig(
        binSize=48, interpStyle="NATURAL_SPLINE", matchMode="GLOBAL", gridStatistic="MEANCLIP"
    )
    result = jm.autotune(
        batch,
        start,
        reference=0,
        bin_sizes=(24, 48),
        roughness=(0.0,),
        num_sigma_clip=(3.0,),
        budget_s=600,
    )
    assert result.config.matchMode == "GLOBAL" and result.config.binSize == 24
    assert np.isfinite(result.loss) and result.loss < result.default_loss
    # task.tune on the same settings: the compiled tables are reused
    task = jm.MatchBackgroundsTask(start)
    tuned = task.tune(
        batch, reference=0, bin_sizes=(24,), roughness=(0.0,), num_sigma_clip=(3.0,), budget_s=600
    )
    assert isinstance(tuned.task, jm.MatchBackgroundsTask)
    assert tuned.task.config == tuned.config == tuned.tuning.config
    assert tuned.config.binSize == 24 and tuned.config.matchMode == "GLOBAL"
    assert tuned.tuning.loss == result.loss


def test_candidate_settings_respect_the_grid():
    config = jm.MatchBackgroundsConfig(usePolynomial=True, order=6, binSize=64)
    cands = candidate_settings(config, (512, 512), cell_size=8, bin_sizes=(64, 128), orders=(2, 6))
    assert cands[0] == config
    # 128-pixel bins: 4 per side, so only orders <= 3 fit
    assert {(c.binSize, c.order) for c in cands} == {(64, 6), (64, 2), (128, 2)}
    assert default_cell_size((1024, 1024)) == 32 and default_cell_size((100, 300)) == 8


def test_cli_match_tune_writes_a_reusable_config(tmp_path, capsys):
    """``jaxmatch match --tune`` writes OUT/chosen.toml; ``--config`` reads it back."""
    from astropy.io import fits

    from jaxmatch import cli

    batch, _ = _scene(_waves, n=2, size=64, seed=7, dtype=np.float32)
    files = []
    for i in range(2):
        path = tmp_path / f"exposure {i}.fits"
        fits.PrimaryHDU(np.asarray(batch.image[i])).writeto(path)
        files.append(str(path))
    out = tmp_path / "out"
    common = ["--gain", "1.0", "--read-noise", "4.0", "--set", "binSize=32"]
    common += ["--set", "gridStatistic=MEANCLIP"]  # start = first candidate: one compilation
    rc = cli.main(["match", *files, "--out", str(out), "--tune", "--tune-budget", "30", *common])
    assert rc == 0
    chosen = out / "chosen.toml"
    config = jm.MatchBackgroundsConfig.load(chosen)
    assert "held-out loss" in chosen.read_text().splitlines()[0]
    assert "autotune:" in capsys.readouterr().err
    rc = cli.main(
        [
            "match",
            *files,
            "--out",
            str(tmp_path / "again"),
            "--config",
            str(chosen),
            "--gain",
            "1.0",
            "--read-noise",
            "4.0",
            "--table",
            str(tmp_path / "t.json"),
        ]
    )
    assert rc == 0
    assert json.loads((tmp_path / "t.json").read_text())
    assert config.binSize in (16, 32)


def test_mask_difference_sources_flags_unshared_light_and_improves_the_fit():
    """Blobs in the science exposure only (unflagged: transients, scale residuals) bias
    a MEAN fit; masking the sources of the difference image removes them from the
    validation cells and the fit. NumPy detection, one compiled `match`."""
    size, sigma = 128, 4.0
    rng = np.random.default_rng(8)
    y, x = np.mgrid[:size, :size]
    truth = 3.0 * np.sin(2 * np.pi * x / size) * np.cos(2 * np.pi * y / size)
    blobs = np.zeros((size, size))
    centres = [(20, 30), (60, 90), (100, 40), (45, 60), (90, 110), (110, 10)]
    for cy, cx in centres:
        blobs += 40.0 * sigma * np.exp(-0.5 * ((y - cy) ** 2 + (x - cx) ** 2) / 3.0**2)
    ref = 100 + rng.normal(0, sigma, (size, size))
    sci = 100 - truth + blobs + rng.normal(0, sigma, (size, size))
    var = np.full((size, size), sigma**2)
    batch = jm.stack_exposures([jm.Exposure(ref, variance=var), jm.Exposure(sci, variance=var)])
    mask_before = np.array(batch.mask)
    config = jm.MatchBackgroundsConfig(binSize=32, interpStyle="NATURAL_SPLINE")
    # blocks of a quarter of the side: the local background follows the waves
    masked = jm.mask_difference_sources(batch, 0, config, detection=Detection(box=32))
    np.testing.assert_array_equal(np.asarray(batch.mask), mask_before)  # input intact
    np.testing.assert_array_equal(np.asarray(masked.mask[0]), mask_before[0])  # ref intact
    np.testing.assert_array_equal(np.asarray(masked.image), np.asarray(batch.image))
    detected = (np.asarray(masked.mask[1]) & (1 << jm.DEFAULT_MASK_PLANES["DETECTED"])) > 0
    core = blobs > 3 * sigma  # where a blob exceeds 3σ per pixel
    assert detected[core].mean() > 0.95
    assert detected[blobs < 0.01 * sigma].mean() < 0.02  # few false detections

    def error(b):
        out = jm.match(b[0], b[np.array([1])], config)
        return float(np.sqrt(np.mean((np.asarray(out.model.getImage())[0] - truth) ** 2)))

    before, after = error(batch), error(masked)
    print(f"model error vs truth: unmasked {before:.3f}, masked {after:.3f} ADU")
    assert after < 0.5 * before
    with pytest.raises(ValueError, match="badMaskPlanes"):
        jm.mask_difference_sources(batch, 0, config.replace(badMaskPlanes=("NO_DATA",)))
    with pytest.raises(ValueError, match="reference index"):
        jm.mask_difference_sources(batch, 2, config)
