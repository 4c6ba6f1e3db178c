"""Gradient-based tuning: held-out loss, its gradients, and `tune` on a known case."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmatch as jm


def _wavy_patch(n=4, size=160, sigma=8.0, seed=0):
    """Exposures whose backgrounds differ by waves of ~10 bins (160 px) plus noise σ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    exposures, backgrounds = [], []
    for i in range(n):
        phase = rng.uniform(0, 2 * np.pi, 2)
        bg = (
            0 * x
            if i == 0
            else 3 * np.sin(2 * np.pi * x / 160 + phase[0]) * np.cos(2 * np.pi * y / 200 + phase[1])
        )
        backgrounds.append(bg)
        image = 100 + bg + rng.normal(0, sigma, (size, size))
        exposures.append(jm.Exposure(image, variance=np.full((size, size), sigma**2)))
    return jm.stack_exposures(exposures), np.stack(backgrounds)


def _with(params, **changes):
    return dataclasses.replace(params, **{k: jnp.asarray(v) for k, v in changes.items()})


def test_heldout_gradients_match_finite_differences():
    """d(held-out loss)/d(every tuned parameter) vs central differences.

    float64, step 1e-5 on the log/logit scale: truncation O(h²) ≈ 1e-10, rounding
    O(1e-16 / h) ≈ 1e-11, both far below the asserted 1e-6 relative. The loss values
    come from the same compiled program as the gradient (one compilation per config).
    """
    rng = np.random.default_rng(1)
    exps = []
    for _ in range(3):
        image = 10 + rng.normal(0, 1, (64, 64))
        image[rng.random((64, 64)) < 0.02] += 8  # outliers for the soft clip to act on
        exps.append(jm.Exposure(image + rng.normal(), variance=np.ones((64, 64))))
    batch = jm.stack_exposures(exps)
    for config in (
        jm.MatchBackgroundsConfig(
            binSize=16,
            interpStyle="NATURAL_SPLINE",
            gridStatistic="MEANCLIP",
            clipSharpness=3.0,
            numSigmaClip=2.5,
        ),
        jm.MatchBackgroundsConfig(binSize=16, usePolynomial=True, order=2),
    ):
        params = _with(jm.TuningParameters.from_config(config), log_roughness=np.log(0.3))
        value_and_grad = jax.jit(
            jax.value_and_grad(lambda p, c=config: jm.heldout_loss(p, batch, c))
        )

        def loss(p, value_and_grad=value_and_grad):
            return value_and_grad(p)[0]

        grads = value_and_grad(params)[1]
        for name in (
            "log_roughness",
            "log_num_sigma_clip",
            "log_clip_sharpness",
            "log_temperature",
        ):
            h = 1e-5
            value = getattr(params, name)
            fd = (
                loss(_with(params, **{name: value + h})) - loss(_with(params, **{name: value - h}))
            ) / (2 * h)
            np.testing.assert_allclose(getattr(grads, name), fd, rtol=1e-6, atol=1e-10)
        for k in range(3):
            e = jnp.zeros(3).at[k].set(1e-5)
            fd = (
                loss(_with(params, weight_logits=params.weight_logits + e))
                - loss(_with(params, weight_logits=params.weight_logits - e))
            ) / 2e-5
            np.testing.assert_allclose(grads.weight_logits[k], fd, rtol=1e-6, atol=1e-10)
        assert abs(float(grads.log_roughness)) > 0
        if config.clipSharpness is not None:
            assert abs(float(grads.log_num_sigma_clip)) > 0
            assert abs(float(grads.log_clip_sharpness)) > 0
        assert abs(float(grads.log_temperature)) > 0  # the soft reference depends on T


def test_tune_finds_the_scanned_optimum_and_beats_the_default():
    """Tuning from λ = 1e-4 lowers the held-out loss, lands within a factor 3 of the
    brute-force scan's best λ, and fits the true backgrounds better than λ = 0."""
    batch, backgrounds = _wavy_patch()
    config = jm.MatchBackgroundsConfig(binSize=16, interpStyle="NATURAL_SPLINE")
    params = jm.TuningParameters.from_config(config)
    grid = np.linspace(-6, 5, 45)  # the scan: 0.25 steps in log λ
    # eager calls: one compiled loss, shared with `tune` below (λ is an argument)
    scan = np.array(
        [
            float(jm.heldout_loss(_with(params, log_roughness=g), batch, config, reference=0))
            for g in grid
        ]
    )
    best = grid[np.argmin(scan)]
    assert 0 < np.argmin(scan) < len(grid) - 1  # an interior optimum, so the test means something

    result = jm.tune(batch, config, optax.adam(0.2), steps=80, reference=0)
    tuned = float(result.parameters.log_roughness)
    print(
        f"scan best log λ = {best:.2f}, tuned log λ = {tuned:.2f}, "
        f"loss {result.history[0]:.4f} -> {result.history[-1]:.4f}"
    )
    assert result.history[-1] < result.history[0]
    assert abs(tuned - best) < np.log(3.0)
    assert result.traces == 1  # one jitted step, no recompilation across 80 steps

    def model_error(roughness):  # λ as an argument: one compiled match for both
        out = jm.match(batch[0], batch[np.arange(1, 4)], config, roughness=roughness)
        truth = backgrounds[0] - backgrounds[1:]
        return float(np.sqrt(np.mean((np.asarray(out.model.getImage()) - truth) ** 2)))

    default_error = model_error(config.splineRoughness)
    tuned_error = model_error(result.config.splineRoughness)
    print(f"model error vs truth: default {default_error:.4f}, tuned {tuned_error:.4f}")
    assert tuned_error < default_error
    assert result.config.splineRoughness == pytest.approx(np.exp(tuned))


def test_insample_losses_prefer_the_roughest_model():
    """The reason to tune on held-out bins: in-sample fitRMS² only falls as λ → 0."""
    batch, _ = _wavy_patch(n=3, size=96)
    config = jm.MatchBackgroundsConfig(binSize=16, interpStyle="NATURAL_SPLINE")
    params = jm.TuningParameters.from_config(config)
    f = jax.jit(
        lambda lr: jm.insample_losses(
            _with(params, log_roughness=lr), batch, config, reference=0
        ).fitRMS2
    )
    values = [float(f(lr)) for lr in (-6.0, -2.0, 2.0)]
    assert values[0] < values[1] < values[2]


def test_soft_reference_tuning_and_grid_search():
    batch, _ = _wavy_patch(n=3, size=96)
    config = jm.MatchBackgroundsConfig(binSize=16, usePolynomial=True, order=2)
    result = jm.tune(
        batch, config, steps=3, parameters=("roughness", "refWeights", "softminTemperature")
    )
    w = (
        result.config.bestRefWeightCoverage,
        result.config.bestRefWeightVariance,
        result.config.bestRefWeightLevel,
    )
    assert sum(w) == pytest.approx(1.0) and all(0 <= v <= 1 for v in w)
    assert result.history.shape == (4,)
    best, table = jm.grid_search(
        batch, config, bin_sizes=(16, 32), orders=(1, 6), steps=2, reference=0
    )
    skipped = [row for row in table if row["skipped"]]
    assert len(table) == 4 and len(skipped) == 2  # order 6 > 96 px / 16 - 1
    assert best.history[-1] == min(row["loss"] for row in table if row["loss"] is not None)


def test_tune_refuses_bad_requests():
    batch, _ = _wavy_patch(n=2, size=64)
    config = jm.MatchBackgroundsConfig(binSize=16, interpStyle="LINEAR")
    with pytest.raises(ValueError, match="unknown tuning parameter"):
        jm.tune(batch, config, parameters=("order",))
    with pytest.raises(ValueError, match="soft reference only"):
        jm.tune(batch, config, parameters=("refWeights",), reference=0)
    with pytest.raises(ValueError, match="folds"):
        jm.fold_labels((3, 3), folds=1)
    labels = jm.fold_labels((4, 5), folds=3, seed=2)
    assert labels.shape == (4, 5) and set(np.unique(labels)) <= {0, 1, 2}


def test_global_mode_heldout_loss_and_tuning():
    """The held-out loss accepts GLOBAL mode: finite-difference gradient in log λ
    (float64, step 1e-5, rtol 1e-6 as above) and a tuning run that lowers it."""
    batch, _ = _wavy_patch(n=3, size=96)
    config = jm.MatchBackgroundsConfig(binSize=16, interpStyle="NATURAL_SPLINE", matchMode="GLOBAL")
    structure = jm.global_structure(batch, config)
    params = _with(jm.TuningParameters.from_config(config), log_roughness=-2.0)
    value_and_grad = jax.jit(
        jax.value_and_grad(lambda p: jm.heldout_loss(p, batch, config, structure=structure))
    )
    value, grads = value_and_grad(params)
    fd = (
        value_and_grad(_with(params, log_roughness=-2.0 + 1e-5))[0]
        - value_and_grad(_with(params, log_roughness=-2.0 - 1e-5))[0]
    ) / 2e-5
    np.testing.assert_allclose(grads.log_roughness, fd, rtol=1e-6)
    # Eager call computes the structure itself and gives the same value.
    np.testing.assert_allclose(jm.heldout_loss(params, batch, config), value, rtol=1e-12)
    result = jm.tune(batch, config.replace(splineRoughness=1e-4), steps=15)
    assert result.history[-1] < result.history[0] and result.traces == 1


@functools.partial(jax.jit, static_argnames=("config", "reference"))
def _loss_and_grad(params, batch, config, reference):
    """One compiled program per (config, reference), shared by the cases below."""
    return jax.value_and_grad(jm.heldout_loss)(params, batch, config, reference=reference)


@pytest.mark.parametrize("case", ["all_masked", "identical", "constant"])
def test_tuning_gradient_is_finite_with_failed_or_degenerate_exposures(case):
    """An all-masked exposure (its fit fails) is left out of the loss, and identical
    or constant exposures (an exact fit: zero residual) keep every gradient finite,
    so `tune` completes and writes a valid config (it used to stop with
    "splineRoughness must be finite")."""
    rng = np.random.default_rng(3)
    no_data = 1 << jm.DEFAULT_MASK_PLANES["NO_DATA"]
    base = 10 + rng.normal(0, 1, (64, 64))
    exps = []
    for i in range(3):
        if case == "constant":
            image = np.full((64, 64), 5.0)
        elif case == "identical":
            image = base.copy()
        else:
            image = 10 + i + rng.normal(0, 1, (64, 64))
        mask = np.full((64, 64), no_data if (case == "all_masked" and i == 2) else 0, np.int32)
        exps.append(jm.Exposure(image, mask=mask, variance=np.ones((64, 64))))
    batch = jm.stack_exposures(exps)
    spline = jm.MatchBackgroundsConfig(binSize=16, interpStyle="NATURAL_SPLINE")
    for config in (spline, spline.replace(usePolynomial=True, order=2)):
        for reference in (0, None):
            params = jm.TuningParameters.from_config(config)
            loss, grads = _loss_and_grad(params, batch, config, reference)
            assert np.isfinite(loss)
            for leaf in jax.tree.leaves(grads):
                assert np.all(np.isfinite(leaf)), (case, config.usePolynomial, reference, grads)
            if case == "all_masked":
                # the two good exposures alone give the same loss: the failed one is left out
                two = jm.stack_exposures(exps[:2])
                ref = reference if reference is None else 0
                np.testing.assert_allclose(
                    loss, jm.heldout_loss(params, two, config, reference=ref), rtol=1e-12
                )
    result = jm.tune(batch, spline.replace(splineRoughness=0.1), steps=3)
    assert np.all(np.isfinite(result.history))
    assert np.isfinite(result.config.splineRoughness)
