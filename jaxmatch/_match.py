"""The batched, differentiable entry point: match N science exposures to a reference.

Data flow for one exposure (docs/algorithm.md, docs/architecture.md), then
``vmap`` over the batch:

    diff = ref - sci  →  fit grid (cell statistic, error, weight)       `_fit`
      →  design matrix (Chebyshev or cardinal spline, separable)        `_plan`
      →  guarded weighted QR solve                                      `_solve`
      →  model image (separable)                                        `_basis`
      →  matched = sci + model, and the diagnostics.                    `_diagnostics`

Everything that changes shapes or code paths comes from the static config; the
spline roughness λ is an array argument, so it can be differentiated and changed
without recompiling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._basis import (
    CHEBYSHEV_ROUGHNESS_FLOOR as CHEBYSHEV_ROUGHNESS_FLOOR,
    SPLINE_ROUGHNESS_FLOOR as SPLINE_ROUGHNESS_FLOOR,
    AbstractBasis,
)
from ._batch import cast_exposure, in_chunks, sharded, working_dtype
from ._binning import CellStats, grid_statistics
from ._compile import filter_jit
from ._config import MatchBackgroundsConfig, MatchBackgroundsTaskConfig, static_config
from ._custom_types import checks_own_arguments
from ._diagnostics import centre_pixels, fit_rms, matched_mse
from ._exposure import Exposure
from ._fit import (
    RIDGE_PER_CELL as RIDGE_PER_CELL,
    Hyperparameters,
    hyperparameters,
    prepare_fit as prepare_fit,
    solve_prepared as solve_prepared,
)
from ._maskbits import traced_mask_bits
from ._model import BackgroundModel
from ._plan import (
    FitPlan,
    design_matrix as design_matrix,
    penalty_rows as penalty_rows,
    plan_fit as plan_fit,
)
from ._resample import CellCount, fit_grid_size, increase_nxnysample
from ._solve import roundoff_ratio
from ._status import (
    FITTED as FITTED,
    ILL_CONDITIONED as ILL_CONDITIONED,
    NAN_DIAGNOSTIC as NAN_DIAGNOSTIC,
    NO_OVERLAP as NO_OVERLAP,
    NONFINITE as NONFINITE,
    STATUS_MESSAGES as STATUS_MESSAGES,
    SUCCESS as SUCCESS,
    UNDERSAMPLED as UNDERSAMPLED,
    Status as Status,
    check_result as check_result,
    final_status,
    fit_status,
    fitted as fitted,
)
from ._undersample import (
    RANK_TOLERANCE as RANK_TOLERANCE,
)
from ._validate import check_match_arguments


class MatchResult(eqx.Module):
    """Results of `match` for N science exposures (leading axis N on every array).

    - ``model``: the `BackgroundModel` (coefficients ``(N, ky, kx)``).
    - ``covariance``: ``(N, K, K)`` covariance of the flattened coefficients
      (data units; scaled by the reduced χ² without `approxWeighting`); see
      `jaxmatch.model_uncertainty` for the model's 1σ image.
    - ``matched``: ``sci.image + model`` ``(N, H, W)``; the unchanged science
      image where the fit failed.
    - ``fitRMS``, ``matchedMSE``, ``diffImVar``: LSST's diagnostics ``(N,)``.
    - ``status``: ``(N,)`` codes (0 success; see `STATUS_MESSAGES`); a failed
      exposure (1-3) has NaN coefficients and diagnostics; 4 (``NAN_DIAGNOSTIC``):
      the model is valid and applied, and ``fitRMS`` or ``diffImVar`` is NaN.
      Status 0: every diagnostic is a number (``matchedMSE`` +inf for overflowing
      pixel values). 5 (``ILL_CONDITIONED``): applied, but the solve's rounding error
      exceeds 0.05 of its statistical 1σ at the working precision.
    - ``grid_values``, ``grid_errors``, ``grid_weights``: the fitted bin grid
      ``(N, ny, nx)`` (values and errors NaN where a bin is not valid; weights
      normalised to mean 1 over valid bins).
    - ``effective_order``: ``(N, 2)`` Chebyshev orders (y, x) actually used
      (after REDUCE_INTERP_ORDER); ``-1`` for the spline.
    - ``min_sampled``: ``(N,)`` smaller number of distinct bin rows/columns with a
      valid bin (``m`` of the undersampling rule).
    - ``bin_size``: ``(N,)`` bin size used (differs from ``binSize`` after
      INCREASE_NXNYSAMPLE).

    `match_one` returns the same record for one exposure, without the axis N.
    """

    model: BackgroundModel
    covariance: Float[Array, "*N K K"]
    matched: Float[Array, "*N H W"]
    fitRMS: Float[Array, " *N"]
    matchedMSE: Float[Array, " *N"]
    diffImVar: Float[Array, " *N"]
    status: Int[Array, " *N"]
    grid_values: Float[Array, "*N ny nx"]
    grid_errors: Float[Array, "*N ny nx"]
    grid_weights: Float[Array, "*N ny nx"]
    effective_order: Int[Array, "*N 2"]
    min_sampled: Int[Array, " *N"]
    bin_size: Int[Array, " *N"]
    model_image: Float[Array, "*N H W"] | None = None


def match_one(
    ref: Exposure,
    sci: Exposure,
    hyper: Hyperparameters,
    bits_ref: int | Array,
    bits_sci: int | Array,
    config: MatchBackgroundsConfig,
    plan: FitPlan,
    bin_size: int | CellCount,
    with_image: bool = False,
) -> MatchResult:
    """Match one science exposure ``(H, W)`` to the reference: a `MatchResult`
    without the batch axis (``vmap`` adds it); ``with_image``: with ``model_image``."""
    dtype = sci.image.dtype
    fit = prepare_fit(ref, sci, hyper, bits_ref, bits_sci, config, plan, with_diff_im_var=True)
    grid, terms, design = fit.grid, fit.terms, fit.problem.design
    basis = plan.basis
    coef, cov = solve_prepared(fit, with_covariance=True)
    coef = coef.reshape(basis.coefficient_shape)
    valid, n_valid = grid.valid, grid.n_valid
    # Coefficient covariance in data units: the fit used w̃ = w / mean(w).
    mean_w = jnp.sum(grid.w_raw) / jnp.maximum(n_valid, 1).astype(dtype)
    resid = jnp.where(valid, grid.z - (design @ coef.reshape(-1)).reshape(valid.shape), 0)
    dof = jnp.maximum(n_valid - jnp.sum(terms.active), 1).astype(dtype)
    chi2_red = jnp.sum(grid.sqrt_w**2 * resid**2) / dof
    # Unit weights carry no noise scale: then the reduced χ² sets it.
    cov = cov / mean_w if config.approxWeighting else cov * chi2_red

    status = fit_status(n_valid == 0, terms.undersampled, jnp.all(jnp.isfinite(coef)))
    ok = status == SUCCESS
    coef = jnp.where(ok, coef, jnp.nan)

    # Model image (separable) and diagnostics (§7, §8).
    model = model_image(coef, basis, dtype)
    matched = matched_image(sci.image, model, coef)
    if plan.diagnostic_grid_is_fit_grid:
        z_diag, valid_diag = grid.value, valid
    else:
        diag = grid_statistics(grid.diff, None, plan.diag_y, plan.diag_x, *fit.statistic)
        z_diag, _, _, n_diag = cast(CellStats, diag)
        valid_diag = n_diag >= 2
    nan = jnp.asarray(jnp.nan, dtype=dtype)
    centres = [jnp.asarray(centre_pixels(e), dtype) for e in (plan.diag_y, plan.diag_x)]
    rms = jnp.where(ok, fit_rms(z_diag, valid_diag, basis.evaluate(coef, *centres)), nan)
    mse = jnp.where(ok, matched_mse(grid.diff, model, grid.usable), nan)
    var = jnp.where(ok, cast(Array, grid.diff_im_var), nan)
    # Rounding error of the solve against its statistical 1σ (status 5, §9).
    sigma_u = 1 / jnp.sqrt(mean_w) if config.approxWeighting else jnp.sqrt(chi2_red)
    roundoff = roundoff_ratio(
        design,
        grid.sqrt_w.reshape(-1),
        fit.problem.penalty,
        fit.sqrt_mu,
        fit.sqrt_eps,
        jnp.where(ok, coef, 0).reshape(-1),
        sigma_u,
    )
    status = final_status(status, roundoff, rms, mse, var)
    return MatchResult(
        model=BackgroundModel(coef, basis),
        covariance=jnp.where(ok, cov, jnp.nan),
        matched=matched,
        fitRMS=rms,
        matchedMSE=mse,
        diffImVar=var,
        status=status.astype(jnp.int32),
        grid_values=jnp.where(valid, grid.value, jnp.nan),
        grid_errors=jnp.where(valid, grid.err, jnp.nan),
        grid_weights=grid.sqrt_w * grid.sqrt_w,
        effective_order=terms.orders,
        min_sampled=terms.m.astype(jnp.int32),
        bin_size=jnp.asarray(fit_grid_size(bin_size, basis.shape), jnp.int32),
        # the model image `matched = sci + model` was computed from, when asked for
        model_image=model if with_image else None,
    )


def model_image(
    coef: Float[Array, "ky kx"], basis: AbstractBasis, dtype: Any
) -> Float[Array, "H W"]:
    """The model of ``coef`` on every pixel of ``basis.shape``."""
    h, w = basis.shape
    # NumPy pixel grids: the basis matrices are then constants of the compiled program.
    return basis.evaluate(coef, np.arange(h, dtype=dtype), np.arange(w, dtype=dtype))


def matched_image(
    image: Float[Array, "H W"], model: Float[Array, "H W"], coef: Float[Array, "ky kx"]
) -> Float[Array, "H W"]:
    """``image + model``; ``image`` unchanged where the fit failed (``coef`` NaN)."""
    ok = jnp.all(jnp.isfinite(coef))
    return jnp.where(ok, image + jnp.where(ok, model, 0), image)


@filter_jit
def match_batch(
    ref: Exposure,
    sci: Exposure,
    hyper: Hyperparameters,
    bits_ref: int | Array,
    bits_sci: int | Array,
    config: MatchBackgroundsConfig,
    bin_size: int | CellCount,
    with_image: bool = False,
) -> MatchResult:
    """The compiled program of `match`: `match_one` ``vmap``ped over the science
    batch ``(N, H, W)``. ``config``, ``bin_size`` and ``with_image`` are static; the
    rest are arrays (no recompilation when they change)."""
    plan = plan_fit(config, ref.image.shape, bin_size)

    def fn(s: Exposure) -> MatchResult:
        return match_one(ref, s, hyper, bits_ref, bits_sci, config, plan, bin_size, with_image)

    return jax.vmap(fn)(sci)


class SequenceMatch(NamedTuple):
    """`match_sequence`'s result for N exposures given as a sequence: the batch axis
    ``(N, ...)`` on the arrays, one matched image per exposure in ``matched``."""

    coefficients: Float[Array, "N ky kx"]
    status: Int[Array, " N"]
    fitRMS: Float[Array, " N"]
    matchedMSE: Float[Array, " N"]
    diffImVar: Float[Array, " N"]
    matched: tuple[Float[Array, "H W"], ...]
    model_images: Float[Array, "N H W"]


@filter_jit
def match_sequence(
    ref: Exposure,
    sci: Sequence[Exposure],
    hyper: Hyperparameters,
    bits_ref: int | Array,
    bits_sci: int | Array,
    config: MatchBackgroundsConfig,
    bin_size: int | CellCount,
) -> SequenceMatch:
    """`match_batch` of N separate exposures ``(H, W)`` without stacking them: a
    compiled loop fits one exposure per step (picked from the sequence by
    ``lax.switch``); after it, the model images are written from the coefficients
    (one vectorised program, ``(N, H, W)``) and each matched image into a buffer of
    its own. The same fit as `match_batch` up to summation order.

    Stacking the sequence inside a program first writes a fresh ``(N, H, W)`` copy of
    every plane (on the CPU most of its cost is the first touch of new pages); the
    loop copies one exposure at a time into a buffer it reuses. The images are not
    outputs of the loop: XLA fills a loop's stacked outputs with zeros before it
    starts, a single-threaded write of every image, and then copies each step's
    image into place (single-threaded: 23 ms of the program's 150 ms below). Each
    model image written with its matched image in one per-exposure program would be
    ~15 ms faster still, but compiles N copies of the evaluation (LSST defaults: the
    first call 3.9 → 5.4 s). 16 × 1024² float32 on 2 CPU cores, the task's list
    program (LSST defaults, NATURAL_SPLINE, MEDIAN): stacked and vectorised
    217–238 ms; looped with the images in the loop 142–207 ms; looped, the images
    after it 103–154 ms.
    """
    plan = plan_fit(config, ref.image.shape, bin_size)
    branches = [lambda e=e: e for e in sci]

    def step(carry: None, k: Array) -> tuple[None, tuple[Array, ...]]:
        fit = match_one(
            ref, jax.lax.switch(k, branches), hyper, bits_ref, bits_sci, config, plan, bin_size
        )
        # Only what the images and the caller need: the rest is never computed.
        kept = (fit.model.coefficients, fit.status, fit.fitRMS, fit.matchedMSE, fit.diffImVar)
        return carry, kept

    _, fitted = jax.lax.scan(step, None, jnp.arange(len(sci)))
    coefficients = fitted[0]
    dtype = coefficients.dtype
    models = jax.vmap(lambda c: model_image(c, plan.basis, dtype))(coefficients)
    matched = tuple(matched_image(s.image, models[k], coefficients[k]) for k, s in enumerate(sci))
    return SequenceMatch(*fitted, matched=matched, model_images=models)


# The Python edge validates its arguments itself, with messages that name the fix
# (LSST's eager errors), so the run-time annotation check of the tests skips it.
@checks_own_arguments
def match(
    reference: Exposure,
    science: Exposure,
    config: MatchBackgroundsConfig | MatchBackgroundsTaskConfig | None = None,
    *,
    roughness: float | Float[Array, ""] | None = None,
    num_sigma_clip: float | Float[Array, ""] | None = None,
    clip_sharpness: float | Float[Array, ""] | None = None,
    raise_on_failure: bool = True,
    chunk_size: int | None = None,
    shard: bool = False,
) -> MatchResult:
    """Match the backgrounds of N science exposures to one reference, in one call.

    Arguments:
        reference: one `Exposure` ``(H, W)``.
        science: a batch ``(N, H, W)`` (see `stack_exposures`) or one exposure
            (then the result keeps a batch axis of 1).
        config: `MatchBackgroundsConfig` (static; default LSST settings), or a
            mutable `MatchBackgroundsTaskConfig`, validated and taken by value.
        roughness: roughness penalty λ ≥ 0 (spline: second differences of the
            knot values; Chebyshev: order-weighted ridge); default
            ``config.splineRoughness``.
        num_sigma_clip: clip threshold of ``MEANCLIP`` and ``diffImVar``; default
            ``config.numSigmaClip``.
        clip_sharpness: β of the smooth clipping weight; default
            ``config.clipSharpness`` (None: LSST's hard clip).
            These three are array arguments: differentiable, and changing their
            values does not recompile.
        chunk_size: process the science exposures in chunks of this many (one
            compiled call reused; the last chunk is padded), to bound memory for
            batches larger than RAM or device memory. Same result as one call.
        shard: split the science exposures over all local devices
            (`jax.sharding`, a 1-D mesh along N; N is padded to a multiple of the
            device count). Same result as one device.
        raise_on_failure: outside `jit`, raise `ValueError` naming every exposure
            whose fit failed. Inside a transformation (jit/grad/vmap) the check is
            skipped: read ``result.status``.

    Returns:
        a `MatchResult`. The model fits ``ref - sci``; ``matched = sci + model``.

    Raises:
        ValueError: (eagerly, from shapes and config) mismatched shapes, an unknown
            bad mask plane, a non-positive binSize, an order too high for the grid
            (polynomial path), too few bins for the interpolation style (spline
            path, unless REDUCE_INTERP_ORDER); a failed fit with ``raise_on_failure``.
        TypeError: wrong argument types; INCREASE_NXNYSAMPLE under a transformation.
    """
    config = static_config(MatchBackgroundsConfig() if config is None else config)
    for name, exp in (("reference", reference), ("science", science)):
        if not isinstance(exp, Exposure):
            raise TypeError(f"{name} must be a jaxmatch.Exposure, got {type(exp).__name__}")
    if reference.batch_shape:
        raise ValueError(
            f"reference must be one exposure (H, W), got shape {reference.image.shape}"
        )
    if len(science.batch_shape) > 1:
        raise ValueError(f"science must be (N, H, W) or (H, W), got shape {science.image.shape}")
    if science.image.shape[-2:] != reference.image.shape:
        raise ValueError(
            f"science exposures have shape {science.image.shape[-2:]}, "
            f"the reference has {reference.image.shape}: they must be on the same pixel grid"
        )
    if not science.batch_shape:
        science = jax.tree.map(lambda a: a[None], science)
    if science.image.shape[0] == 0:
        raise ValueError("science holds no exposures (N = 0)")
    dtype = working_dtype(config, reference, science)
    reference, science = cast_exposure(reference, dtype), cast_exposure(science, dtype)
    reference, science, bits_ref, bits_sci = traced_mask_bits(
        reference, science, config.badMaskPlanes
    )
    hyper = hyperparameters(config, dtype, roughness, num_sigma_clip, clip_sharpness)
    plan = plan_fit(config, reference.image.shape, config.binSize)  # eager shape checks
    check_match_arguments(config, roughness, num_sigma_clip, clip_sharpness, plan)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")

    def one_call(sub: Exposure) -> MatchResult:
        return match_batch(reference, sub, hyper, bits_ref, bits_sci, config, config.binSize)

    run: Callable[[Exposure], MatchResult] = one_call
    if shard:
        run = sharded(run, jax.local_devices())
    result = in_chunks(run, science, chunk_size)
    traced = isinstance(result.status, jax.core.Tracer)
    if config.usePolynomial and config.undersampleStyle == "INCREASE_NXNYSAMPLE":
        if traced:
            raise TypeError(
                "undersampleStyle='INCREASE_NXNYSAMPLE' re-bins data-dependently and cannot "
                "run under jit/grad/vmap; use REDUCE_INTERP_ORDER or THROW_EXCEPTION there"
            )
        result = _increase_nxnysample(reference, science, hyper, bits_ref, bits_sci, config, result)
    if raise_on_failure and not traced:
        check_result(result)
    return result


def _increase_nxnysample(
    reference: Exposure,
    science: Exposure,
    hyper: Hyperparameters,
    bits_ref: int | Array,
    bits_sci: int | Array,
    config: MatchBackgroundsConfig,
    result: MatchResult,
) -> MatchResult:
    """Re-fit the undersampled exposures once on LSST's number of cells (`_resample`)."""
    throw = config.replace(undersampleStyle="THROW_EXCEPTION")
    shape = reference.image.shape

    def refit(idx: np.ndarray, grid: Any) -> MatchResult:
        sub = jax.tree.map(lambda a: a[idx], science)
        return match_batch(reference, sub, hyper, bits_ref, bits_sci, throw, grid)

    return increase_nxnysample(
        result, config, shape, refit, lambda grid: plan_fit(throw, shape, grid), _set_rows
    )


def _set_rows(result: MatchResult, index: np.ndarray, rows: MatchResult) -> MatchResult:
    """``result`` with the exposures ``index`` replaced by ``rows``; a field whose
    per-exposure shape differs (the re-binned grid) keeps its old value."""
    old, new = jax.tree.leaves(result), jax.tree.leaves(rows)
    merged = [a.at[index].set(b) if a.shape[1:] == b.shape[1:] else a for a, b in zip(old, new)]
    return jax.tree.unflatten(jax.tree.structure(result), merged)
