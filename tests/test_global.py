"""Global matching: equivalence with single-reference mode, dithered patches,
disconnected groups, calibrated uncertainties and gradients."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_pair_batch

import jaxmatch as jm

NO_DATA = 1 << jm.DEFAULT_MASK_PLANES["NO_DATA"]


def test_reference_pairs_only_equal_single_reference_mode():
    """Full overlap, pairs (ref, i) only, PAIR weights: the joint problem decouples
    into the single-reference fits. Chebyshev: both solve the same weighted least
    squares up to the ε guards (the global solve's 1e-6 per cell against 1e-10,
    docs/algorithm.md §10: measured 8e-5 on these models of ~10), so 1e-4; the spline's λ_floor is
    scaled by a global instead of a per-pair mean weight, which moves the answer by
    O(λ_floor) = 1e-6 relative, so 1e-5 there."""
    ref, sci, _ = make_pair_batch(np.random.default_rng(0), (80, 96), n_sci=3)
    batch = jm.stack_exposures([ref] + [sci[i] for i in range(3)])
    pairs = np.array([[0, 1], [0, 2], [0, 3]])
    groups = jm.connected_groups(4, pairs)
    gauge = np.array([True, False, False, False])
    for fields, tol in (
        (dict(usePolynomial=True, order=3), 1e-4),
        (dict(interpStyle="NATURAL_SPLINE"), 1e-5),
    ):
        config = jm.MatchBackgroundsConfig(binSize=16, globalWeights="PAIR", **fields)
        joint = jm.match_global(batch, pairs, groups, gauge, config)
        single = jm.match(ref, sci, config)
        np.testing.assert_allclose(
            joint.model.getImage()[1:], single.model.getImage(), rtol=0, atol=tol * 3
        )
        np.testing.assert_array_equal(np.asarray(joint.model.coefficients[0]), 0.0)
        assert np.all(np.asarray(joint.status) == 0)


def _dithered_patch(seed=0, size=128, sigma=1.0):
    """Five exposures of one patch, each covering part of it (the rest NO_DATA).

    Exposure 1 overlaps the reference (0) on ~17% of its area but exposures 2-4
    widely. Backgrounds are quadratic polynomials over the whole patch.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    u, v = 2 * (x + 0.5) / size - 1, 2 * (y + 0.5) / size - 1
    footprints = [
        (slice(None), slice(0, 80)),
        (slice(None), slice(70, 128)),
        (slice(None), slice(32, 112)),
        (slice(None), slice(16, 96)),
        (slice(0, 80), slice(None)),
    ]
    exposures, backgrounds, covered = [], [], []
    for fp in footprints:
        c = rng.normal(0, 3, 6)
        bg = c[0] + c[1] * u + c[2] * v + c[3] * u * v + c[4] * u**2 + c[5] * v**2
        image = 100 + bg + rng.normal(0, sigma, (size, size))
        mask = np.full((size, size), NO_DATA, np.int32)
        mask[fp] = 0
        image[mask != 0] = np.nan
        exposures.append(jm.Exposure(image, mask, np.full((size, size), sigma**2)))
        backgrounds.append(bg)
        covered.append(mask == 0)
    return jm.stack_exposures(exposures), np.stack(backgrounds), np.stack(covered)


def _pair_mismatch(models, backgrounds, covered):
    """RMS over each pair's overlap of the matched backgrounds' difference."""
    out = {}
    n = len(backgrounds)
    for i in range(n):
        for j in range(i + 1, n):
            both = covered[i] & covered[j]
            if both.sum() == 0:
                continue
            d = (backgrounds[i] + models[i]) - (backgrounds[j] + models[j])
            out[(i, j)] = float(np.sqrt(np.mean(d[both] ** 2)))
    return out


@pytest.mark.parametrize(
    "fields",
    [
        dict(usePolynomial=True, order=2),
        dict(usePolynomial=True, order=4),
        dict(interpStyle="NATURAL_SPLINE"),
    ],
    ids=["chebyshev2", "chebyshev4", "spline"],
)
def test_global_beats_single_reference_on_a_dithered_patch(fields):
    batch, backgrounds, covered = _dithered_patch()
    config = jm.MatchBackgroundsConfig(binSize=16, **fields)
    assert covered[0][covered[1]].mean() < 0.2  # exposure 1 barely overlaps the reference

    single = jm.match(batch[0], batch[np.arange(1, 5)], config)
    single_models = np.concatenate([np.zeros((1, 128, 128)), np.asarray(single.model.getImage())])
    joint = jm.match_all(batch, config.replace(matchMode="GLOBAL"))
    joint_models = np.asarray(joint.model.getImage())
    m_single = _pair_mismatch(single_models, backgrounds, covered)
    m_joint = _pair_mismatch(joint_models, backgrounds, covered)
    print(f"\n{fields}: pair mismatch after matching [ADU] (noise sigma = 1)")
    print("pair     single-ref   global")
    for pair in m_single:
        print(f"{pair}   {m_single[pair]:10.4f}   {m_joint[pair]:8.4f}")
    worst_single, worst_joint = max(m_single.values()), max(m_joint.values())
    print(f"worst    {worst_single:10.4f}   {worst_joint:8.4f}")
    assert worst_joint < 0.2 * worst_single


def test_disconnected_groups_are_detected(caplog):
    """Two groups with no overlap between them, plus one isolated exposure."""
    size = 64
    rng = np.random.default_rng(3)
    exps = []
    footprints = [slice(0, 24), slice(8, 30), slice(36, 64), slice(40, 60), None]
    for fp in footprints:
        mask = np.full((size, size), NO_DATA, np.int32)
        if fp is not None:
            mask[:, fp] = 0
        image = np.where(mask == 0, 5 + rng.normal(0, 1, (size, size)), np.nan)
        exps.append(jm.Exposure(image, mask, np.ones((size, size))))
    batch = jm.stack_exposures(exps)
    config = jm.MatchBackgroundsConfig(binSize=8, usePolynomial=True, order=1)
    with caplog.at_level(logging.WARNING):
        result = jm.match_all(batch, config, raise_on_failure=False)
    assert "2 groups" in caplog.text and "overlap no other exposure" in caplog.text
    groups = np.asarray(result.group)
    assert groups[0] == groups[1] != groups[2] == groups[3] and groups[4] == -1
    assert list(np.asarray(result.gauge)) == [True, False, True, False, False]
    assert list(np.asarray(result.status)) == [0, 0, 0, 0, 1]
    # Policy (docs/algorithm.md §10): each group is matched to its own gauge.
    assert list(np.asarray(result.gauge_index)) == [0, 0, 2, 2, -1]
    assert list(np.asarray(result.matched_to_reference)) == [True, True, False, False, False]
    assert bool(result.groups_unmatched)
    assert "exposures [2, 3] matched to 2" in caplog.text
    assert "not matched to each other" in caplog.text
    np.testing.assert_array_equal(np.asarray(result.model.coefficients[2]), 0.0)  # its gauge
    with pytest.raises(ValueError, match="exposure 4"):
        jm.match_all(batch, config)
    # MEAN gauge: every group's mean model vanishes.
    mean = jm.match_all(batch, config.replace(globalGauge="MEAN"), raise_on_failure=False)
    c = np.asarray(mean.model.coefficients)
    np.testing.assert_allclose(c[0] + c[1], 0.0, atol=1e-10)
    np.testing.assert_allclose(c[2] + c[3], 0.0, atol=1e-10)


def test_uncertainties_are_calibrated():
    """Over 100 noise realisations the RMS of (fitted - true) model matches the
    predicted 1σ (`model_uncertainty`) to 15%: with 100 draws the RMS itself is
    known to ~7% (1/√200), and the prediction uses bin errors estimated from 256
    pixels each (~4% on the variance)."""
    size, n = 64, 4
    y, x = np.mgrid[:size, :size]
    rng = np.random.default_rng(0)
    bgs = [0.5 * rng.normal() + 0.01 * rng.normal() * x + 0.01 * rng.normal() * y for _ in range(n)]
    truth = np.array([bgs[0] - b for b in bgs])
    config = jm.MatchBackgroundsConfig(binSize=16, usePolynomial=True, order=1)
    fits, sigmas = [], []
    for _ in range(100):
        exps = [
            jm.Exposure(10 + b + rng.normal(0, 1, (size, size)), variance=np.ones((size, size)))
            for b in bgs
        ]
        result = jm.match_all(jm.stack_exposures(exps), config)
        fits.append(np.asarray(result.model.getImage()))
        sigmas.append(np.asarray(jm.model_uncertainty(result.model, result.covariance)))
    scatter = np.sqrt(np.mean((np.array(fits) - truth) ** 2, axis=(0, 2, 3)))[1:]
    predicted = np.sqrt(np.mean(np.array(sigmas) ** 2, axis=(0, 2, 3)))[1:]
    print("scatter / predicted:", scatter / predicted)
    np.testing.assert_allclose(scatter / predicted, 1.0, atol=0.15)
    # Single-reference mode reports covariances too, with the same meaning.
    single = jm.match(
        jm.Exposure(10 + bgs[0] + rng.normal(0, 1, (size, size)), variance=np.ones((size, size))),
        jm.Exposure(10 + bgs[1] + rng.normal(0, 1, (size, size)), variance=np.ones((size, size))),
        config,
    )
    sigma = np.asarray(jm.model_uncertainty(single.model, single.covariance))
    # two exposures, 16 bins of 256 px, 3 terms: σ ≈ √(2/256 · 3/16) ≈ 0.04 on average
    assert 0.02 < float(np.sqrt(np.mean(sigma**2))) < 0.08


def test_global_gradients_match_finite_differences():
    """d/d(images, λ) of a scalar of the joint solve vs central differences
    (float64, step 1e-5: agreement to 1e-6 relative, see test_match)."""
    ref, sci, _ = make_pair_batch(np.random.default_rng(1), (48, 64), n_sci=2, defects=False)
    batch = jm.stack_exposures([ref, sci[0], sci[1]])
    pairs = np.array([[0, 1], [0, 2], [1, 2]])
    groups, gauge = jm.connected_groups(3, pairs), np.array([True, False, False])
    config = jm.MatchBackgroundsConfig(binSize=16, interpStyle="NATURAL_SPLINE")

    def loss(image, rough):
        b = jm.Exposure(image, batch.mask, batch.variance)
        out = jm.match_global(b, pairs, groups, gauge, config, roughness=rough)
        return jnp.mean(out.model.getImage() ** 2) + jnp.sum(out.fitRMS[1:] ** 2)

    loss = jax.jit(loss)
    rough = jnp.asarray(0.2)
    g_img, g_rough = jax.grad(loss, argnums=(0, 1))(batch.image, rough)
    direction = jnp.asarray(np.random.default_rng(2).normal(size=batch.image.shape))
    fd = (
        loss(batch.image + 1e-5 * direction, rough) - loss(batch.image - 1e-5 * direction, rough)
    ) / 2e-5
    np.testing.assert_allclose(jnp.sum(g_img * direction), fd, rtol=1e-6)
    fd = (loss(batch.image, rough + 1e-5) - loss(batch.image, rough - 1e-5)) / 2e-5
    np.testing.assert_allclose(g_rough, fd, rtol=1e-6)


def test_task_global_mode_keeps_the_result_shape():
    batch, _, _ = _dithered_patch()
    exps = [batch[i] for i in range(5)]
    config = jm.MatchBackgroundsConfig(binSize=16, usePolynomial=True, order=2, matchMode="GLOBAL")
    task = jm.MatchBackgroundsTask(config)
    out = task.run(exps, "dithered", refExpDataRef=exps[0])
    infos = out.backgroundInfoList
    assert [s.isReference for s in infos] == [True, False, False, False, False]
    assert all(s.backgroundModel is not None for s in infos[1:])
    assert all(s.group == 0 for s in infos)
    assert infos[0].backgroundModel is None and infos[0].fitRMS is None
    assert all(s.matchedToReference for s in infos[1:])


def test_one_group_has_no_group_warning(caplog):
    batch, _, _ = _dithered_patch()
    config = jm.MatchBackgroundsConfig(binSize=16, usePolynomial=True, order=1)
    with caplog.at_level(logging.WARNING):
        result = jm.match_all(batch, config)
    assert "global matching" not in caplog.text
    assert not bool(result.groups_unmatched)
    assert list(np.asarray(result.gauge_index)) == [0] * 5
    assert jm.group_summary(result) is None
