"""Gradient-based tuning of the continuous hyperparameters, with optax.

The loss to minimise is the **held-out (cross-validated) residual** of the bin
grid. The valid bins of each difference grid are split into folds (a
checkerboard, or ``k`` random folds fixed by a seed); for each fold the model is
fitted on the other bins and scored on the held-out ones with their inverse
variance:

    L = mean_exposures [ Σ_folds Σ_{held-out bins} (z - m_{-fold})² / e² ] / n_valid

It is ≈ 1 when the model predicts unseen bins to within their noise. The
in-sample losses (``fitRMS²``, ``matchedMSE``) always *fall* as the model gets
more flexible — an interpolating spline has ``fitRMS ≈ 0`` — so minimising them
picks the roughest model and fits the noise; the held-out loss penalises both
over- and under-fitting, which is why it is the one to tune on.

Tuned parameters (unconstrained, so plain gradient steps keep them legal):

- ``log_roughness``: λ = exp(·), the spline or Chebyshev roughness;
- ``log_num_sigma_clip`` and ``log_clip_sharpness``: the smooth ``MEANCLIP``
  (needs ``config.clipSharpness`` set: the hard clip has zero gradient);
- ``weight_logits`` (3,): the reference-cost weights (coverage, variance, level)
  = softmax(·), on the simplex;
- ``log_temperature``: the soft-min temperature.

The reference weights and temperature matter only with the soft reference
(``reference=None``): every exposure is matched to ``Σ_i w_i x_i`` with the
soft-min weights ``w``.
"""
# pyright: reportIndexIssue=false, reportAttributeAccessIssue=false, reportArgumentType=false
# (the global solve's dict record and optax's untyped parameter trees.)

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from ._binning import cell_centres
from ._compile import filter_jit
from ._config import MatchBackgroundsConfig
from ._exposure import Exposure, stack_exposures, usable_mask
from ._fit import hyperparameters, prepare_fit, solve_prepared
from ._match import match
from ._plan import design_matrix, plan_fit
from ._reference import (
    reference_costs,
    reference_statistics,
    soft_reference_exposure,
    softmin_weights,
)
from ._status import SUCCESS

PARAMETERS = ("roughness", "numSigmaClip", "clipSharpness", "refWeights", "softminTemperature")
_FIELDS = {
    "roughness": "log_roughness",
    "numSigmaClip": "log_num_sigma_clip",
    "clipSharpness": "log_clip_sharpness",
    "refWeights": "weight_logits",
    "softminTemperature": "log_temperature",
}
#: Starting λ when the config has λ = 0 (log 0 is not a starting point).
MIN_START_ROUGHNESS = 1e-4


class TuningParameters(eqx.Module):
    """The continuous hyperparameters in unconstrained form (all array leaves)."""

    log_roughness: Float[Array, ""]
    log_num_sigma_clip: Float[Array, ""]
    log_clip_sharpness: Float[Array, ""]
    weight_logits: Float[Array, " 3"]
    log_temperature: Float[Array, ""]

    @classmethod
    def from_config(cls, config: MatchBackgroundsConfig) -> TuningParameters:
        """Start from a config (λ = 0 starts at `MIN_START_ROUGHNESS`)."""
        weights = np.array(
            [config.bestRefWeightCoverage, config.bestRefWeightVariance, config.bestRefWeightLevel]
        )
        sharp = 4.0 if config.clipSharpness is None else config.clipSharpness
        return cls(
            log_roughness=jnp.log(jnp.asarray(max(config.splineRoughness, MIN_START_ROUGHNESS))),
            log_num_sigma_clip=jnp.log(jnp.asarray(float(config.numSigmaClip))),
            log_clip_sharpness=jnp.log(jnp.asarray(float(sharp))),
            weight_logits=jnp.asarray(np.log(np.maximum(weights, 1e-6))),
            log_temperature=jnp.log(jnp.asarray(config.softminTemperature)),
        )

    @property
    def roughness(self):
        return jnp.exp(self.log_roughness)

    @property
    def num_sigma_clip(self):
        return jnp.exp(self.log_num_sigma_clip)

    @property
    def clip_sharpness(self):
        return jnp.exp(self.log_clip_sharpness)

    @property
    def ref_weights(self):
        """(coverage, variance, level) weights, on the simplex."""
        return jax.nn.softmax(self.weight_logits)

    @property
    def temperature(self):
        return jnp.exp(self.log_temperature)

    def to_config(self, config: MatchBackgroundsConfig) -> MatchBackgroundsConfig:
        """``config`` with the tuned values written into its fields."""
        w = np.asarray(self.ref_weights, dtype=float)
        return config.replace(
            splineRoughness=float(self.roughness),
            numSigmaClip=float(self.num_sigma_clip),
            clipSharpness=None if config.clipSharpness is None else float(self.clip_sharpness),
            bestRefWeightCoverage=float(w[0]),
            bestRefWeightVariance=float(w[1]),
            bestRefWeightLevel=float(w[2]),
            softminTemperature=float(self.temperature),
        )


def as_config(config) -> MatchBackgroundsConfig:
    """A `MatchBackgroundsConfig` from None (LSST defaults), a config, or anything
    holding one in ``.config`` (a `MatchBackgroundsTask`)."""
    if config is None:
        return MatchBackgroundsConfig()
    if not isinstance(config, MatchBackgroundsConfig):
        config = getattr(config, "config", config)
    if not isinstance(config, MatchBackgroundsConfig):
        raise TypeError(
            f"config must be a MatchBackgroundsConfig or a task, got {type(config).__name__}"
        )
    return config


def _batch(exposures) -> Exposure:
    if isinstance(exposures, Exposure):
        if len(exposures.batch_shape) != 1:
            raise ValueError(f"exposures must be a batch (N, H, W), got {exposures.image.shape}")
        return exposures
    return stack_exposures(list(exposures))


def _reference_and_science(params, batch: Exposure, config, reference):
    """The (hard or soft) reference and the science batch."""
    if reference is not None:
        n = batch.image.shape[0]
        if not 0 <= reference < n:
            raise ValueError(f"reference index {reference} is not in 0..{n - 1}")
        others = np.array([i for i in range(n) if i != reference])
        return batch[reference], jax.tree.map(lambda a: a[others], batch)
    usable = usable_mask(batch.image, (batch.mask, batch.bitmask(config.badMaskPlanes)))
    var, level, cov = jax.vmap(reference_statistics)(batch.image, usable)
    w_cov, w_var, w_level = params.ref_weights
    costs = reference_costs(
        var, level, cov, weight_coverage=w_cov, weight_variance=w_var, weight_level=w_level
    )
    w = softmin_weights(costs, params.temperature)
    return soft_reference_exposure(batch, w), batch


def _hyper(params, config, dtype):
    sharp = None if config.clipSharpness is None else params.clip_sharpness
    return hyperparameters(config, dtype, params.roughness, params.num_sigma_clip, sharp)


def fold_labels(shape: tuple[int, int], folds: str | int = "checkerboard", seed: int = 0):
    """Fold index of every bin, ``(ny, nx)`` ints: a checkerboard or k random folds."""
    ny, nx = shape
    if folds == "checkerboard":
        return np.add.outer(np.arange(ny), np.arange(nx)) % 2
    if isinstance(folds, (int, np.integer)) and folds >= 2:
        return np.random.default_rng(seed).integers(0, int(folds), size=(ny, nx))
    raise ValueError(f"folds must be 'checkerboard' or an int >= 2, got {folds!r}")


def heldout_loss(
    params: TuningParameters,
    exposures: Exposure,
    config: MatchBackgroundsConfig,
    *,
    reference: int | None = None,
    folds: str | int = "checkerboard",
    seed: int = 0,
    structure=None,
) -> Float[Array, ""]:
    """Cross-validated χ² per valid bin (module docstring), averaged over exposures.

    ``exposures``: a batch ``(N, H, W)`` (or a list). ``reference``: index of a
    fixed reference, or None for the soft-min reference. Exposures whose fit
    fails (no valid bin, undersampled) are left out of the mean.

    With ``config.matchMode == "GLOBAL"`` the folds hold out bins of every pair at
    once and the joint solve predicts them; the loss is the held-out weighted χ²
    per independent datum. ``structure`` = `jaxmatch.global_structure(...)` (pairs,
    groups, gauge); it is computed from the masks when None (outside `jit` only).

    Compiled once per config, shapes, reference and folds (called eagerly too); the
    config's λ, clip, reference weights and temperature are not part of that key
    (``params`` supplies them), so scanning them does not recompile.
    """
    batch = _batch(exposures)
    if config.matchMode == "GLOBAL":
        if structure is None:
            if isinstance(batch.mask, jax.core.Tracer):
                raise TypeError(
                    "GLOBAL mode inside jit needs "
                    "structure=jaxmatch.global_structure(batch, config)"
                )
            from ._global import global_structure

            structure = global_structure(batch, config, 0 if reference is None else reference)
        structure = _static_structure(structure)
    return _heldout_loss(params, batch, _loss_config(config), reference, folds, seed, structure)


def _loss_config(config: MatchBackgroundsConfig) -> MatchBackgroundsConfig:
    """``config`` with the fields `TuningParameters` supplies set to fixed values.

    The held-out loss takes λ, the clip, the reference weights and the temperature
    from the parameters (only whether ``clipSharpness`` is None matters), so
    configs that differ in these alone share one compiled loss and tuning step.
    """
    d = MatchBackgroundsConfig()
    return config.replace(
        splineRoughness=d.splineRoughness,
        numSigmaClip=d.numSigmaClip,
        clipSharpness=None if config.clipSharpness is None else 1.0,
        bestRefWeightCoverage=d.bestRefWeightCoverage,
        bestRefWeightVariance=d.bestRefWeightVariance,
        bestRefWeightLevel=d.bestRefWeightLevel,
        softminTemperature=d.softminTemperature,
    )


def _static_structure(structure) -> tuple:
    """``(pairs, groups, gauge)`` as nested tuples: hashable, so a static argument."""
    pairs, groups, gauge = (np.asarray(a) for a in structure)
    return (
        tuple(map(tuple, pairs.reshape(-1, 2).astype(int).tolist())),
        tuple(int(g) for g in groups),
        tuple(bool(g) for g in gauge),
    )


@filter_jit
def _heldout_loss(params, batch, config, reference, folds, seed, structure):
    """`heldout_loss` on a batch, compiled once per config, shapes and fold layout
    (called eagerly it would otherwise dispatch hundreds of small programs)."""
    if config.matchMode == "GLOBAL":
        return _heldout_global(params, batch, config, reference, folds, seed, structure)
    ref, sci = _reference_and_science(params, batch, config, reference)
    dtype = sci.image.dtype
    hyper = _hyper(params, config, dtype)
    plan = plan_fit(config, ref.image.shape, config.binSize)
    bits_ref = ref.bitmask(config.badMaskPlanes)
    bits_sci = sci.bitmask(config.badMaskPlanes)
    labels = fold_labels((len(plan.fit_y[0]), len(plan.fit_x[0])), folds, seed)
    cy = jnp.asarray(cell_centres(*plan.fit_y), dtype=dtype)
    cx = jnp.asarray(cell_centres(*plan.fit_x), dtype=dtype)
    ky, kx = plan.basis.coefficient_shape

    def one(s):
        fit = prepare_fit(ref, s, hyper, bits_ref, bits_sci, config, plan)
        valid, z, err = fit.grid.valid, fit.grid.z, fit.grid.err
        # One batched solve over the folds: fit without the fold, score on it.
        held = jnp.asarray(labels[None] == np.arange(int(labels.max()) + 1)[:, None, None])

        def score(held_f):
            coef = solve_prepared(fit, jnp.where(held_f, 0.0, fit.grid.sqrt_w))
            pred = plan.basis.evaluate(coef.reshape(ky, kx), cy, cx)
            chi = jnp.where(valid & held_f, (z - pred) / err, 0.0)
            return jnp.sum(chi * chi)

        total = jnp.sum(jax.vmap(score)(held))
        ok = (fit.grid.n_valid > 0) & ~fit.terms.undersampled
        return total / jnp.maximum(fit.grid.n_valid, 1).astype(dtype), ok

    per_exposure, ok = jax.vmap(one)(sci)
    return jnp.sum(jnp.where(ok, per_exposure, 0.0)) / jnp.maximum(jnp.sum(ok), 1).astype(dtype)


def _heldout_global(params, batch, config, reference, folds, seed, structure):
    """The held-out loss of global matching (see `heldout_loss`)."""
    from ._global import pair_data, pair_weights, solve_pairs

    pairs, groups, gauge = (np.asarray(a) for a in structure)
    pairs = pairs.reshape(-1, 2)
    n = batch.image.shape[0]
    dtype = batch.image.dtype
    hyper = _hyper(params, config, dtype)
    plan = plan_fit(config, batch.image.shape[1:], config.binSize)
    bits = batch.bitmask(config.badMaskPlanes)
    pi, pj = jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1])
    data = pair_data(batch, pairs, hyper, bits, config, plan)
    z, valid = data.z, data.valid
    w = pair_weights(config, pi, pj, n, data.e2, data.w_pair, valid)
    design = design_matrix(plan, dtype)
    labels = fold_labels((len(plan.fit_y[0]), len(plan.fit_x[0])), folds, seed).reshape(-1)
    held = jnp.asarray(labels[None] == np.arange(int(labels.max()) + 1)[:, None])

    def score(held_f):
        keep = valid & ~held_f[None]
        sol = solve_pairs(
            jnp.where(keep, w, 0.0), z, keep, pairs, groups, gauge, hyper, config, plan, n, False
        )
        pred = (sol.coef[pj] - sol.coef[pi]) @ design.T
        r = jnp.where(valid & held_f[None], z - pred, 0.0)
        return jnp.sum(w * r * r)

    total = jnp.sum(jax.vmap(score)(held))
    seen = jnp.zeros((n, valid.shape[1]), bool).at[pi].max(valid).at[pj].max(valid)
    if config.globalWeights == "PAIR":
        n_data = jnp.sum(valid)
    else:
        n_data = jnp.sum(jnp.maximum(jnp.sum(seen, axis=0) - 1, 0))
    return total / jnp.maximum(n_data, 1).astype(dtype)


class InSampleLosses(NamedTuple):
    """The in-sample losses of `insample_losses`, means over the fitted exposures."""

    fitRMS2: Float[Array, ""]  # mean fitRMS² [ADU²]
    matchedMSE: Float[Array, ""]  # mean matchedMSE [ADU²]


def insample_losses(
    params: TuningParameters,
    exposures: Exposure,
    config: MatchBackgroundsConfig,
    *,
    reference: int | None = None,
) -> InSampleLosses:
    """The in-sample losses for comparison: mean ``fitRMS²`` and mean ``matchedMSE``
    over the exposures whose fit succeeded (`InSampleLosses`)."""
    batch = _batch(exposures)
    ref, sci = _reference_and_science(params, batch, config, reference)
    hyper = _hyper(params, config, sci.image.dtype)
    out = match(
        ref,
        sci,
        config,
        roughness=hyper.roughness,
        num_sigma_clip=hyper.num_sigma_clip,
        clip_sharpness=hyper.clip_sharpness,
        raise_on_failure=False,
    )
    ok = out.status == SUCCESS
    n = jnp.maximum(jnp.sum(ok), 1)
    return InSampleLosses(
        fitRMS2=jnp.sum(jnp.where(ok, out.fitRMS**2, 0.0)) / n,
        matchedMSE=jnp.sum(jnp.where(ok, out.matchedMSE, 0.0)) / n,
    )


@dataclasses.dataclass
class TuningResult:
    """What `tune` returns: the tuned config, parameters and history.

    (A task is built from it by the caller: ``MatchBackgroundsTask(result.config)``;
    tuning does not depend on the task layer.)
    """

    config: MatchBackgroundsConfig
    parameters: TuningParameters
    history: np.ndarray
    traces: int


def tune(
    exposures,
    config=None,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 100,
    *,
    parameters: Sequence[str] = ("roughness",),
    reference: int | None = None,
    folds: str | int = "checkerboard",
    seed: int = 0,
    progress: bool = False,
) -> TuningResult:
    """Tune continuous hyperparameters by gradient descent on `heldout_loss`.

    Arguments:
        exposures: a batch ``(N, H, W)`` or a list of exposures (all of them are
            used in every step).
        config: a `MatchBackgroundsConfig` or a `MatchBackgroundsTask` (the start).
        optimizer: an optax optimiser (default ``optax.adam(0.1)``).
        steps: number of optimisation steps.
        parameters: which of `PARAMETERS` to tune (the others stay fixed).
        reference: a fixed reference index, or None for the soft reference
            (needed to tune ``refWeights`` / ``softminTemperature``).
        folds, seed: the cross-validation folds (`fold_labels`).
        progress: show a tqdm progress bar (if tqdm is installed).

    Returns a `TuningResult`; ``history`` holds the loss before each step and the
    final loss (``steps + 1`` values); ``traces`` counts the compilations of the
    step this call made: 1, or 0 when an earlier call with the same optimiser
    object, config, shapes and folds already compiled it (the step never
    recompiles between steps).
    """
    config = as_config(config)
    unknown = set(parameters) - set(PARAMETERS)
    if unknown:
        raise ValueError(f"unknown tuning parameter(s) {sorted(unknown)}; choose from {PARAMETERS}")
    if reference is not None and {"refWeights", "softminTemperature"} & set(parameters):
        raise ValueError("refWeights and softminTemperature are tuned with the soft reference only")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    batch = _batch(exposures)
    optimizer = _default_optimizer() if optimizer is None else optimizer
    dtype = batch.image.dtype
    params = jax.tree.map(lambda a: a.astype(dtype), TuningParameters.from_config(config))
    tuned = {_FIELDS[p] for p in parameters}
    mask = TuningParameters(
        **{f.name: jnp.asarray(f.name in tuned, dtype) for f in dataclasses.fields(params)}
    )
    opt_state = optimizer.init(params)

    structure = None
    if config.matchMode == "GLOBAL":
        from ._global import global_structure

        if {"refWeights", "softminTemperature"} & set(parameters):
            raise ValueError("refWeights and softminTemperature are not used in GLOBAL mode")
        structure = global_structure(batch, config, 0 if reference is None else reference)
        structure = _static_structure(structure)
    settings = (_loss_config(config), reference, folds, seed, structure)

    traces_before = _STEP_TRACES[0]
    history = []
    bar = _progress(steps, progress)
    for _ in range(steps):
        params, opt_state, loss = _tune_step(params, opt_state, batch, mask, optimizer, settings)
        history.append(float(loss))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=history[-1])
    if bar is not None:
        bar.close()
    # The final loss from the compiled step too (its update is discarded): no
    # second program to compile for one forward pass.
    history.append(float(_tune_step(params, opt_state, batch, mask, optimizer, settings)[2]))
    new_config = params.to_config(config)
    return TuningResult(
        config=new_config,
        parameters=params,
        history=np.asarray(history),
        traces=_STEP_TRACES[0] - traces_before,
    )


#: How many times `_tune_step` has been traced (compiled) in this process.
_STEP_TRACES = [0]


@functools.cache
def _default_optimizer() -> optax.GradientTransformation:
    """``optax.adam(0.1)``, one object, so that `tune` calls share compiled steps."""
    return optax.adam(0.1)


@filter_jit
def _tune_step(params, opt_state, batch, mask, optimizer, settings):
    """One optimiser step on `heldout_loss`; compiled once per optimiser object,
    config, shapes and fold layout (``settings``), and reused by later `tune` calls."""
    _STEP_TRACES[0] += 1  # runs only while tracing
    loss, grads = jax.value_and_grad(_heldout_loss)(params, batch, *settings)
    # where, not g * m: a NaN gradient of a fixed parameter must not leak (0 · NaN)
    grads = jax.tree.map(lambda g, m: jnp.where(m, g, 0), grads, mask)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def grid_search(
    exposures,
    config: MatchBackgroundsConfig | None = None,
    *,
    bin_sizes: Sequence[int] = (),
    orders: Sequence[int] = (),
    steps: int = 50,
    **tune_kwargs,
) -> tuple[TuningResult, list[dict]]:
    """Choose the discrete settings (``binSize``, ``order``) by a small grid search.

    For every combination, the continuous parameters are tuned with `tune`; the
    combination with the lowest final held-out loss wins. Combinations the config
    refuses (e.g. an order too high for the grid) are skipped. Returns the best
    `TuningResult` and a table (one dict per combination).
    """
    config = as_config(config)
    bin_sizes = list(bin_sizes) or [config.binSize]
    orders = list(orders) or [config.order]
    best, table = None, []
    for b in bin_sizes:
        for o in orders:
            candidate = config.replace(binSize=int(b), order=int(o))
            try:
                result = tune(exposures, candidate, steps=steps, **tune_kwargs)
            except ValueError as err:
                table.append(dict(binSize=b, order=o, loss=None, skipped=str(err)))
                continue
            loss = float(result.history[-1])
            table.append(dict(binSize=b, order=o, loss=loss, skipped=None))
            if best is None or loss < best.history[-1]:
                best = result
    if best is None:
        raise ValueError("no combination of bin_sizes and orders could be fitted")
    return best, table


def _progress(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="tuning")
