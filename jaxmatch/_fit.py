"""One exposure's fit: the binned grid, the active terms and the penalised solve.

`prepare_fit` runs docs/algorithm.md §1-6 for one difference ``ref - sci`` up to
the solve and returns a `PreparedFit`; `solve_prepared` solves it. The
single-reference match, the global match (one prepared fit per pair) and the
tuning losses (refits with held-out bins) all go through these two functions.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._binning import CellStats, code_unusable, grid_statistics
from ._config import MatchBackgroundsConfig
from ._exposure import Exposure, usable_mask
from ._plan import FitPlan, FitProblem, fit_problem
from ._range import has_subnormal, scale_up, typical_exponent
from ._solve import RIDGE_PER_CELL as RIDGE_PER_CELL, solve_least_squares
from ._undersample import ActiveTerms


class _KeyAccess:
    """``record["name"]`` as ``record.name``, for code written against the dict
    records of earlier versions."""

    _legacy_keys: dict[str, str] = {}

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str):
            raise TypeError(f"{type(self).__name__} fields are read by name, got {key!r}")
        value: Any = self
        for part in self._legacy_keys.get(key, key).split("."):
            value = getattr(value, part)
        return value


class Hyperparameters(_KeyAccess, eqx.Module):
    """The continuous hyperparameters of a fit, as arrays (differentiable, and a
    change of value does not recompile).

    Attributes:
        roughness: penalty weight λ ≥ 0 (config ``splineRoughness``).
        num_sigma_clip: clip threshold of ``MEANCLIP`` and ``diffImVar``
            (config ``numSigmaClip``).
        clip_sharpness: β of the smooth clipping weight, or None for LSST's hard
            clip (config ``clipSharpness``).
    """

    roughness: Float[Array, ""]
    num_sigma_clip: Float[Array, ""]
    clip_sharpness: Float[Array, ""] | None


def hyperparameters(
    config: MatchBackgroundsConfig,
    dtype: Any,
    roughness: float | ArrayLike | None = None,
    num_sigma_clip: float | ArrayLike | None = None,
    clip_sharpness: float | ArrayLike | None = None,
) -> Hyperparameters:
    """The `Hyperparameters` in ``dtype``; None takes the config's value."""
    rough = config.splineRoughness if roughness is None else roughness
    nsig = config.numSigmaClip if num_sigma_clip is None else num_sigma_clip
    sharp = config.clipSharpness if clip_sharpness is None else clip_sharpness
    return Hyperparameters(
        roughness=jnp.asarray(rough, dtype=dtype),
        num_sigma_clip=jnp.asarray(nsig, dtype=dtype),
        clip_sharpness=None if sharp is None else jnp.asarray(sharp, dtype=dtype),
    )


class GridStatistic(NamedTuple):
    """How a cell's value is computed (the statistic arguments of `grid_statistics`)."""

    statistic: str
    num_sigma_clip: Float[Array, ""]
    num_iter: int
    clip_sharpness: Float[Array, ""] | None


def grid_statistic(config: MatchBackgroundsConfig, hyper: Hyperparameters) -> GridStatistic:
    """The cell statistic of the config (``gridStatistic``, ``numIter``) and ``hyper``."""
    return GridStatistic(
        config.gridStatistic, hyper.num_sigma_clip, config.numIter, hyper.clip_sharpness
    )


class FitGrid(eqx.Module):
    """One exposure's binned difference (§3, §4).

    Attributes:
        diff: ``(H, W)`` ``ref - sci`` [ADU], NaN where unusable (the coded difference).
        value: ``(ny, nx)`` cell statistic [ADU].
        err: ``(ny, nx)`` cell error ``e = max(s, gridStdevEpsilon) / √m`` [ADU] (1/√1
            where not valid).
        valid: ``(ny, nx)`` cells with at least 2 usable pixels.
        w_raw: ``(ny, nx)`` raw weights ``1/e²`` (1 unweighted; 0 where not valid).
        sqrt_w: ``(ny, nx)`` square roots of the weights normalised to mean 1 over the
            valid cells.
        z: ``(ny, nx)`` the values to fit, ``value`` where valid, else 0.
        n_valid: the number of valid cells.
        diff_im_var: LSST's ``diffImVar`` (§8), or None when not asked for.
    """

    diff: Float[Array, "H W"]
    value: Float[Array, "ny nx"]
    err: Float[Array, "ny nx"]
    valid: Bool[Array, "ny nx"]
    w_raw: Float[Array, "ny nx"]
    sqrt_w: Float[Array, "ny nx"]
    z: Float[Array, "ny nx"]
    n_valid: Int[Array, ""]
    diff_im_var: Float[Array, ""] | None

    @property
    def usable(self) -> Bool[Array, "H W"]:
        """``(H, W)`` pixels that enter the statistics."""
        return ~jnp.isnan(self.diff)


class PreparedFit(_KeyAccess, eqx.Module):
    """Everything of one exposure's fit up to the solve.

    Attributes:
        problem: the per-plan design, penalty and constant (`FitProblem`).
        grid: the per-exposure binned difference (`FitGrid`).
        terms: the active terms after the undersampling rule (`ActiveTerms`).
        statistic: the cell statistic, for a second binning of ``grid.diff``.
        sqrt_mu: ``√(λ + λ_floor)``.
        sqrt_eps: ``√ε`` with ``ε = RIDGE_PER_CELL · max(n_valid, 1)``.
    """

    problem: FitProblem
    grid: FitGrid
    terms: ActiveTerms
    statistic: GridStatistic
    sqrt_mu: Float[Array, ""]
    sqrt_eps: Float[Array, ""]

    _legacy_keys = {
        "design": "problem.design",
        "penalty": "problem.penalty",
        "constant": "problem.constant",
        "stat": "statistic",
        "under": "terms.undersampled",
        "orders": "terms.orders",
        "m_min": "terms.m",
        **{
            name: f"grid.{name}"
            for name in (
                "diff",
                "value",
                "err",
                "valid",
                "w_raw",
                "sqrt_w",
                "z",
                "n_valid",
                "diff_im_var",
                "usable",
            )
        },
    }

    def __getitem__(self, key: str) -> Any:
        if key == "active":  # flattened, as the solve reads it
            return self.terms.active.reshape(-1)
        return super().__getitem__(key)


def bin_difference(
    ref: Exposure,
    sci: Exposure,
    bits_ref: int | Array,
    bits_sci: int | Array,
    config: MatchBackgroundsConfig,
    plan: FitPlan,
    statistic: GridStatistic,
    *,
    with_diff_im_var: bool = False,
) -> FitGrid:
    """Bin ``ref - sci`` on the plan's fit grid: value, error and weight (§3, §4)."""
    dtype = sci.image.dtype
    diff = ref.image - sci.image
    # The difference is written once, NaN where unusable: the later passes over the
    # pixels read it instead of two images and two mask planes.
    diff = code_unusable(diff, usable_mask(diff, (ref.mask, bits_ref), (sci.mask, bits_sci)))

    if with_diff_im_var:
        # diffImVar: over usable, finite pixels, in units of 2^e (`_range`).
        e = typical_exponent(ref.variance)
        flushed = has_subnormal(ref.variance) | has_subnormal(sci.variance)
        stats, pooled = cast(
            tuple[CellStats, CellStats],
            grid_statistics(
                diff,
                None,
                plan.fit_y,
                plan.fit_x,
                *statistic,
                pooled=((ref.variance, sci.variance), None),
                pooled_exponent=e,
            ),
        )
        value, s, m, n = stats
        var_value = jnp.where(flushed, jnp.nan, scale_up(pooled[0], e))
    else:
        stats = cast(CellStats, grid_statistics(diff, None, plan.fit_y, plan.fit_x, *statistic))
        value, s, m, n = stats
        var_value = None
    valid = n >= 2
    eps = config.gridStdevEpsilon
    m_safe = jnp.where(valid, m, 1).astype(dtype)
    s_safe = jnp.where(valid, s, 1.0)
    err = jnp.maximum(s_safe, eps) / jnp.sqrt(m_safe)
    weighted = config.approxWeighting & jnp.any(valid & (err > eps))
    sqrt_w = jnp.where(valid, jnp.where(weighted, 1.0 / err, 1.0), 0.0).astype(dtype)
    n_valid = jnp.sum(valid)
    w_raw = sqrt_w * sqrt_w  # 1/e² (or 1 unweighted), before the normalisation
    mean_w = jnp.sum(w_raw) / jnp.maximum(n_valid, 1).astype(dtype)
    sqrt_w = sqrt_w / jnp.sqrt(jnp.where(n_valid > 0, mean_w, 1.0))
    return FitGrid(
        diff=diff,
        value=value,
        err=err,
        valid=valid,
        w_raw=w_raw,
        sqrt_w=sqrt_w,
        z=jnp.where(valid, value, 0.0),
        n_valid=n_valid,
        diff_im_var=var_value,
    )


def prepare_fit(
    ref: Exposure,
    sci: Exposure,
    hyper: Hyperparameters,
    bits_ref: int | Array,
    bits_sci: int | Array,
    config: MatchBackgroundsConfig,
    plan: FitPlan,
    *,
    with_diff_im_var: bool = False,
) -> PreparedFit:
    """Everything of one exposure's fit up to the solve (docs/algorithm.md §1-6).

    Arguments:
        ref, sci: one exposure each, ``(H, W)``, in the working dtype.
        hyper: the continuous `Hyperparameters`.
        bits_ref, bits_sci: bad-pixel bits of each mask (``badMaskPlanes``).
        config: the static config.
        plan: the static `FitPlan`.
        with_diff_im_var: also compute ``diffImVar`` (§8) in the same data passes
            as the cell statistic (``grid.diff_im_var``).
    """
    dtype = sci.image.dtype
    statistic = grid_statistic(config, hyper)
    grid = bin_difference(
        ref, sci, bits_ref, bits_sci, config, plan, statistic, with_diff_im_var=with_diff_im_var
    )
    problem = fit_problem(plan, dtype)
    return PreparedFit(
        problem=problem,
        grid=grid,
        terms=plan.basis.active_terms(config, grid.valid, problem.design),
        statistic=statistic,
        sqrt_mu=jnp.sqrt(hyper.roughness + problem.roughness_floor).astype(dtype),
        sqrt_eps=jnp.sqrt(RIDGE_PER_CELL * jnp.maximum(grid.n_valid, 1).astype(dtype)),
    )


def solve_prepared(
    fit: PreparedFit,
    sqrt_w: Float[Array, "ny nx"] | Float[Array, " M"] | None = None,
    *,
    with_covariance: bool = False,
) -> Any:
    """Coefficients ``(K,)`` of a prepared fit; ``sqrt_w`` overrides the bin weights.

    The deviation from the weighted mean is fitted and the mean added back as the
    constant function (§6): the ε guard then pulls unconstrained coefficients (bins
    without data) towards the mean level, not towards 0.

    Returns:
        ``c`` ``(K,)``; with ``with_covariance``, ``(c, Σ)`` with ``Σ`` ``(K, K)`` in
        the units of the normalised weights (see `solve_least_squares`).
    """
    sqrt_w = (fit.grid.sqrt_w if sqrt_w is None else sqrt_w).reshape(-1)
    z = fit.grid.z.reshape(-1)
    w = sqrt_w * sqrt_w
    offset = jnp.sum(w * z) / jnp.where(jnp.sum(w) > 0, jnp.sum(w), 1.0)
    problem = fit.problem
    out = solve_least_squares(
        problem.design,
        z - offset,
        sqrt_w,
        problem.penalty,
        fit.sqrt_mu,
        fit.terms.active.reshape(-1),
        fit.sqrt_eps,
        with_covariance=with_covariance,
    )
    if with_covariance:
        coef, cov = cast(tuple[Array, Array], out)
        return coef + offset * problem.constant, cov
    return cast(Array, out) + offset * problem.constant
