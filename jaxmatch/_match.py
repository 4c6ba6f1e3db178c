"""The batched, differentiable entry point: match N science exposures to a reference.

Data flow for one exposure (docs/algorithm.md), then ``vmap`` over the batch:

    diff = ref - sci  →  fit grid (cell statistic, error, weight)
      →  design matrix (Chebyshev or cardinal spline, separable)
      →  guarded weighted QR solve  →  model image (separable)
      →  matched = sci + model, and the diagnostics.

Everything that changes shapes or code paths comes from the static config; the
spline roughness λ is an array argument, so it can be differentiated and changed
without recompiling.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int

from ._binning import bin_edges, cell_centres, cell_edges, code_unusable, grid_statistics
from ._chebyshev import term_mask
from ._compile import filter_jit
from ._config import MatchBackgroundsConfig
from ._diagnostics import centre_pixels, fit_rms, matched_mse
from ._exposure import Exposure
from ._model import BackgroundModel, Basis
from ._solve import (
    ILL_CONDITIONED_MESSAGE,
    RIDGE_PER_CELL,
    ROUNDOFF_LIMIT,
    fit_roundoff,
    solve_least_squares,
    warn_ill_conditioned,
)
from ._spline import DEGREE, MIN_POINTS, difference_matrix, knots, max_style
from ._validate import check_match_arguments

# Status codes (docs/algorithm.md §9), returned per exposure from inside jit.
SUCCESS, NO_OVERLAP, UNDERSAMPLED, NONFINITE, NAN_DIAGNOSTIC = 0, 1, 2, 3, 4
ILL_CONDITIONED = 5
STATUS_MESSAGES = {
    SUCCESS: "success",
    NO_OVERLAP: "no usable bin: no overlap with the reference (every pixel masked or NaN)",
    UNDERSAMPLED: "too few usable bins for the requested order (undersampleStyle)",
    NONFINITE: "the fit gave a non-finite model",
    NAN_DIAGNOSTIC: (
        "fitted and applied, but a diagnostic is undefined (NaN): no usable pixel with a "
        "finite variance (diffImVar) or no diagnostic bin with 2 usable pixels (fitRMS)"
    ),
    ILL_CONDITIONED: ILL_CONDITIONED_MESSAGE,
}
# The codes whose model is valid and applied (the others are failures).
FITTED = (SUCCESS, NAN_DIAGNOSTIC, ILL_CONDITIONED)


def fitted(status: Array) -> Array:
    """``True`` where the model is valid and was applied (a status in `FITTED`)."""
    return jnp.isin(status, jnp.asarray(FITTED))


# λ_floor: fills missing bins smoothly in the spline fit (§6); for Chebyshev it
# only keeps d(result)/dλ finite at λ = 0 (the penalty enters as √λ).
SPLINE_ROUGHNESS_FLOOR = 1e-6
CHEBYSHEV_ROUGHNESS_FLOOR = 1e-12
# ε = RIDGE_PER_CELL · (valid cells): the rank guard of the solve (§6), in _solve.


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
      Status 0: every diagnostic is a number (+inf for overflowing pixel values).
    - ``grid_values``, ``grid_errors``, ``grid_weights``: the fitted bin grid
      ``(N, ny, nx)`` (values and errors NaN where a bin is not valid; weights
      normalised to mean 1 over valid bins).
    - ``effective_order``: ``(N, 2)`` Chebyshev orders (y, x) actually used
      (after REDUCE_INTERP_ORDER); ``-1`` for the spline.
    - ``min_sampled``: ``(N,)`` smaller number of distinct bin rows/columns with a
      valid bin (``m`` of the undersampling rule).
    - ``bin_size``: ``(N,)`` bin size used (differs from ``binSize`` after
      INCREASE_NXNYSAMPLE).
    """

    model: BackgroundModel
    covariance: Float[Array, "N K K"]
    matched: Float[Array, "N H W"]
    fitRMS: Float[Array, " N"]
    matchedMSE: Float[Array, " N"]
    diffImVar: Float[Array, " N"]
    status: Int[Array, " N"]
    grid_values: Float[Array, "N ny nx"]
    grid_errors: Float[Array, "N ny nx"]
    grid_weights: Float[Array, "N ny nx"]
    effective_order: Int[Array, "N 2"]
    min_sampled: Int[Array, " N"]
    bin_size: Int[Array, " N"]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static layout of one fit: grids, basis and penalty (shapes only)."""

    fit_y: tuple[np.ndarray, np.ndarray]
    fit_x: tuple[np.ndarray, np.ndarray]
    diag_y: tuple[np.ndarray, np.ndarray]
    diag_x: tuple[np.ndarray, np.ndarray]
    basis: Basis


def _orders(config: MatchBackgroundsConfig) -> tuple[int, int]:
    """Chebyshev orders (y, x)."""
    return (config.order if config.orderY is None else config.orderY), config.order


def plan_fit(config: MatchBackgroundsConfig, shape: tuple[int, int], bin_size: int) -> _Plan:
    """Check the static (shape-only) conditions and lay out the fit.

    ``bin_size`` is the fit grid's (``binSize``, or the re-binned size of
    INCREASE_NXNYSAMPLE); the diagnostic bins always use ``config.binSize``, as
    LSST's fitRMS does.

    Raises `ValueError` as LSST does: on the polynomial path when the short side is
    below ``binSize`` or the order exceeds ``ceil(side / binSize) - 1``; on the
    spline path when an axis has too few bins for ``interpStyle`` and
    ``undersampleStyle`` is not ``REDUCE_INTERP_ORDER``.
    """
    h, w = shape
    fit_y, fit_x = cell_edges(h, bin_size), cell_edges(w, bin_size)
    diag_y, diag_x = bin_edges(h, config.binSize), bin_edges(w, config.binSize)
    if config.usePolynomial:
        order_y, order_x = _orders(config)
        for side, order, axis in ((h, order_y, "y"), (w, order_x, "x")):
            if config.chebyshevTerms == "TOTAL":
                side, order, axis = min(h, w), config.order, "short side"
            if side < bin_size:
                raise ValueError(
                    f"image {axis} of {side} pixels is smaller than binSize={bin_size}; "
                    "use a smaller binSize"
                )
            npoints = math.ceil(side / bin_size)
            if order > npoints - 1:
                raise ValueError(
                    f"order={order} > npoints - 1 = {npoints - 1} bins along the {axis} "
                    f"({side} pixels, binSize={bin_size}); lower the order or the binSize"
                )
        basis = Basis("CHEBYSHEV", (h, w), order_y=order_y, order_x=order_x)
    else:
        ky = knots(cell_centres(*fit_y), config.splineKnotSpacing)
        kx = knots(cell_centres(*fit_x), config.splineKnotSpacing)
        style = config.interpStyle
        fewest = min(len(ky), len(kx))
        if fewest < MIN_POINTS[style]:
            if config.undersampleStyle != "REDUCE_INTERP_ORDER":
                raise ValueError(
                    f"{len(ky)} x {len(kx)} spline knots are too few for interpStyle={style} "
                    f"(needs {MIN_POINTS[style]} per axis) with undersampleStyle="
                    f"{config.undersampleStyle}; use a smaller binSize or REDUCE_INTERP_ORDER"
                )
            style = max_style(fewest)
        basis = Basis(
            "SPLINE",
            (h, w),
            style=style,
            knots_y=tuple(map(float, ky)),
            knots_x=tuple(map(float, kx)),
        )
    return _Plan(fit_y, fit_x, diag_y, diag_x, basis)


def _active_terms(config, valid, design=None):
    """Active Chebyshev terms after the undersampling rule, and the status flag.

    Returns ``(active (ky, kx) bool, undersampled bool, order_y_eff, order_x_eff, m)``.
    With ``design`` (the ``(ny·nx, K)`` design matrix) the rank rule follows LSST's
    row/column rule (§5): terms the valid bins do not determine are dropped
    (REDUCE_INTERP_ORDER) or flag the exposure (the other styles).
    """
    order_y, order_x = _orders(config)
    mx = jnp.sum(jnp.any(valid, axis=0))
    my = jnp.sum(jnp.any(valid, axis=1))
    m = jnp.minimum(mx, my)
    reduce = config.undersampleStyle == "REDUCE_INTERP_ORDER"
    if config.chebyshevTerms == "TOTAL":
        under = m <= config.order
        eff = jnp.where(under & reduce, m - 1, config.order)
        eff_y = eff_x = eff
    else:
        under = (mx <= order_x) | (my <= order_y)
        eff_x = jnp.where(reduce, jnp.minimum(order_x, mx - 1), order_x)
        eff_y = jnp.where(reduce, jnp.minimum(order_y, my - 1), order_y)
    p, q = np.arange(order_y + 1)[:, None], np.arange(order_x + 1)[None, :]
    base = jnp.asarray(term_mask(order_y, order_x, config.chebyshevTerms))
    degree = (p + q) if config.chebyshevTerms == "TOTAL" else np.maximum(p, q)
    if config.chebyshevTerms == "TOTAL":
        active = base & (p + q <= eff)
    else:
        active = base & (p <= eff_y) & (q <= eff_x)
    if design is not None:
        # The highest degree whose terms the valid bins determine (§5).
        rank_order = _determined_degree(design, valid, active, degree)
        if reduce:
            eff_y, eff_x = jnp.minimum(eff_y, rank_order), jnp.minimum(eff_x, rank_order)
            active = active & (degree <= rank_order)
        else:
            under = under | jnp.any(active & (degree > rank_order))
    return active, under & (not reduce), eff_y, eff_x, m


# Relative residual below which a design column counts as a combination of the
# columns before it (docs/algorithm.md §5). Exactly dependent layouts give ~1e-14
# in float64; determined ones >= 3e-5 for every order <= 8 on 9x9..16x16 grids.
# float32 rounding leaves ~1e-5 for dependent columns, so there the bar is 1e-4
# (a design that ill-conditioned would lose 4 of float32's 7 digits anyway).
RANK_TOLERANCE = {4: 1e-4, 8: 1e-9}


def _determined_degree(design, valid, active, degree):
    """The largest ``d`` such that the valid bins determine every active term of
    degree ``<= d`` (the largest degree when they determine all of them).

    Modified Gram–Schmidt (twice, for stability) over the active columns of the
    valid rows, each normalised, in order of increasing degree: a column whose
    residual after projecting out the earlier ones is below `RANK_TOLERANCE` is
    dependent, and its degree and all above are undetermined. Plain JAX (no LAPACK
    call); a status check, so no gradient flows through it.
    """
    degree = np.asarray(degree).reshape(-1)
    perm = np.argsort(degree, kind="stable")
    a = lax.stop_gradient(design) * valid.reshape(-1, 1) * active.reshape(1, -1)
    a = a[:, perm]
    norms = jnp.sqrt(jnp.sum(a * a, axis=0))
    a = a / jnp.where(norms > 0, norms, 1)
    tol = RANK_TOLERANCE[jnp.dtype(a.dtype).itemsize]

    def step(k, state):
        basis, independent = state
        v = lax.dynamic_index_in_dim(a, k, axis=1, keepdims=False)
        for _ in range(2):
            v = v - basis @ (basis.T @ v)
        size = jnp.sqrt(jnp.sum(v * v))
        ok = size > tol
        basis = lax.dynamic_update_index_in_dim(
            basis, jnp.where(ok, v / jnp.where(ok, size, 1), 0), k, axis=1
        )
        return basis, independent.at[k].set(ok)

    k = a.shape[1]
    _, independent = lax.fori_loop(0, k, step, (jnp.zeros_like(a), jnp.zeros(k, bool)))
    dependent = active.reshape(-1)[perm] & ~independent
    top = int(degree.max())
    return jnp.min(jnp.where(dependent, jnp.asarray(degree[perm]), top + 1)) - 1


def prepare_fit(
    ref, sci, hyper, bits_ref, bits_sci, config, plan, *, with_diff_im_var: bool = False
) -> dict:
    """Everything of one exposure's fit up to the solve (docs/algorithm.md §1-6).

    Returns a dict: ``diff`` (H, W), NaN where unusable, and ``usable``; the bin grid
    ``value``, ``err``, ``valid``, ``sqrt_w`` (normalised √w̃) and ``z`` (ny, nx);
    the least-squares pieces ``design`` (ny·nx, K), ``penalty``, ``sqrt_mu``,
    ``active`` (K,), ``sqrt_eps``; and ``under``, ``orders``, ``m_min``, ``n_valid``.
    With ``with_diff_im_var``, also ``diff_im_var`` (§8), computed in the same data
    passes as the grid statistic.
    ``hyper`` holds the continuous hyperparameters as arrays: ``roughness``,
    ``num_sigma_clip`` and ``clip_sharpness`` (None for the hard clip).
    """
    dtype = sci.image.dtype
    diff = ref.image - sci.image
    usable = ((ref.mask & bits_ref) == 0) & ((sci.mask & bits_sci) == 0) & jnp.isfinite(diff)
    roughness, nsig = hyper["roughness"], hyper["num_sigma_clip"]
    stat = (config.gridStatistic, nsig, config.numIter, hyper["clip_sharpness"])

    # The difference is written once, NaN where unusable: the later passes over the
    # pixels read it instead of two images and two mask planes.
    diff = code_unusable(diff, usable)
    usable = ~jnp.isnan(diff)

    # Bin grid: value, error e = max(s, eps)/sqrt(m), weight (§3, §4).
    if with_diff_im_var:
        variances = (ref.variance, sci.variance)  # diffImVar: over usable, finite pixels
        (value, s, m, n), (var_value, _, _, _) = grid_statistics(
            diff, None, plan.fit_y, plan.fit_x, *stat, pooled=(variances, None)
        )
    else:
        value, s, m, n = grid_statistics(diff, None, plan.fit_y, plan.fit_x, *stat)
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
    z = jnp.where(valid, value, 0.0)

    # Design matrix and penalty (§5, §6).
    basis = plan.basis
    ky, kx = basis.coefficient_shape
    design = design_matrix(plan, dtype)
    penalty, floor = penalty_rows(basis, dtype)
    sqrt_mu = jnp.sqrt(roughness + floor).astype(dtype)
    if basis.kind == "CHEBYSHEV":
        active, under, eff_y, eff_x, m_min = _active_terms(config, valid, design)
        orders = jnp.stack([eff_y, eff_x]).astype(jnp.int32)
    else:
        m_min = jnp.minimum(jnp.sum(jnp.any(valid, 0)), jnp.sum(jnp.any(valid, 1)))
        active = np.ones((ky, kx), dtype=bool)  # static: the solve can use it
        under = jnp.zeros((), dtype=bool)
        orders = jnp.full((2,), -1, dtype=jnp.int32)
    sqrt_eps = jnp.sqrt(RIDGE_PER_CELL * jnp.maximum(n_valid, 1).astype(dtype))
    return dict(
        diff=diff,
        diff_im_var=var_value,
        usable=usable,
        stat=stat,
        value=value,
        w_raw=w_raw,
        err=err,
        valid=valid,
        sqrt_w=sqrt_w,
        z=z,
        design=design,
        penalty=penalty,
        sqrt_mu=sqrt_mu,
        active=active.reshape(-1),
        sqrt_eps=sqrt_eps,
        constant=_constant_coefficients(basis, dtype),
        under=under,
        orders=orders,
        m_min=m_min,
        n_valid=n_valid,
    )


def design_matrix(plan: _Plan, dtype) -> Array:
    """``B[(a, b), (p, q)] = Y_p(c_a) X_q(c_b)`` at the fit-grid centres, ``(ny·nx, K)``."""
    cy = jnp.asarray(cell_centres(*plan.fit_y), dtype=dtype)
    cx = jnp.asarray(cell_centres(*plan.fit_x), dtype=dtype)
    ky, kx = plan.basis.coefficient_shape
    by, bx = plan.basis.matrix_y(cy), plan.basis.matrix_x(cx)
    return jnp.einsum("ap,bq->abpq", by, bx).reshape(-1, ky * kx)


def penalty_rows(basis: Basis, dtype) -> tuple[np.ndarray, float]:
    """Roughness operator ``D`` ``(P, K)`` with ``P(c) = |D c|²`` (a NumPy array, known
    at trace time), and its λ_floor (§5, §6).

    Chebyshev: the order-weighted ridge ``Σ (p + q)² C[p, q]²`` (the constant is
    free); spline: second (degree 0: first) differences along each axis.
    """
    ky, kx = basis.coefficient_shape
    if basis.kind == "CHEBYSHEV":
        pq = np.add.outer(np.arange(ky), np.arange(kx)).reshape(-1)
        return np.diag(pq.astype(dtype)), CHEBYSHEV_ROUGHNESS_FLOOR
    degree = DEGREE[basis.style]
    dy, dx = difference_matrix(ky, degree), difference_matrix(kx, degree)
    rows = np.concatenate([np.kron(dy, np.eye(kx)), np.kron(np.eye(ky), dx)])
    return rows.astype(dtype), SPLINE_ROUGHNESS_FLOOR


def _constant_coefficients(basis: Basis, dtype):
    """Coefficients (K,) of the constant function 1: ``T_0 T_0`` for Chebyshev,
    every knot value 1 for the cardinal spline bases."""
    ky, kx = basis.coefficient_shape
    if basis.kind == "CHEBYSHEV":
        return jnp.zeros(ky * kx, dtype).at[0].set(1.0)
    return jnp.ones(ky * kx, dtype)


def solve_prepared(fit: dict, sqrt_w=None, *, with_covariance: bool = False):
    """Coefficients (K,) of a prepared fit; ``sqrt_w`` overrides the bin weights.

    With ``with_covariance``: ``(coefficients, covariance)`` in the units of the
    normalised weights (see `solve_least_squares`).
    """
    sqrt_w = (fit["sqrt_w"] if sqrt_w is None else sqrt_w).reshape(-1)
    # Fit the deviation from the weighted mean and add the mean back as the
    # constant function (§6): the ε guard then pulls unconstrained coefficients
    # (bins without data) towards the mean level, not towards 0.
    z = fit["z"].reshape(-1)
    w = sqrt_w * sqrt_w
    offset = jnp.sum(w * z) / jnp.where(jnp.sum(w) > 0, jnp.sum(w), 1.0)
    out = solve_least_squares(
        fit["design"],
        z - offset,
        sqrt_w,
        fit["penalty"],
        fit["sqrt_mu"],
        fit["active"],
        fit["sqrt_eps"],
        with_covariance=with_covariance,
    )
    if with_covariance:
        return out[0] + offset * fit["constant"], out[1]
    return out + offset * fit["constant"]


def _match_one(ref, sci, hyper, bits_ref, bits_sci, config, plan):
    """Match one science exposure (single ``Exposure``) to the reference."""
    dtype = sci.image.dtype
    fit = prepare_fit(ref, sci, hyper, bits_ref, bits_sci, config, plan, with_diff_im_var=True)
    basis = plan.basis
    ky, kx = basis.coefficient_shape
    coef, cov = solve_prepared(fit, with_covariance=True)
    coef = coef.reshape(ky, kx)
    diff, usable, stat = fit["diff"], fit["usable"], fit["stat"]
    value, err, valid, sqrt_w = fit["value"], fit["err"], fit["valid"], fit["sqrt_w"]
    n_valid, under, orders, m_min = fit["n_valid"], fit["under"], fit["orders"], fit["m_min"]
    # Coefficient covariance in data units: the fit used w̃ = w / mean(w).
    mean_w = jnp.sum(fit["w_raw"]) / jnp.maximum(n_valid, 1).astype(dtype)
    resid = jnp.where(valid, fit["z"] - (fit["design"] @ coef.reshape(-1)).reshape(valid.shape), 0)
    dof = jnp.maximum(n_valid - jnp.sum(fit["active"]), 1).astype(dtype)
    chi2_red = jnp.sum(sqrt_w**2 * resid**2) / dof
    # Unit weights carry no noise scale: then the reduced χ² sets it.
    cov = cov / mean_w if config.approxWeighting else cov * chi2_red

    status = jnp.where(n_valid == 0, NO_OVERLAP, jnp.where(under, UNDERSAMPLED, SUCCESS))
    status = jnp.where((status == SUCCESS) & ~jnp.all(jnp.isfinite(coef)), NONFINITE, status)
    ok = status == SUCCESS
    coef = jnp.where(ok, coef, jnp.nan)

    # Model image (separable) and diagnostics (§7, §8).
    h, w = basis.shape
    # NumPy pixel grids: the basis matrices are then constants of the compiled program.
    model = basis.evaluate(coef, np.arange(h, dtype=dtype), np.arange(w, dtype=dtype))
    matched = jnp.where(ok, sci.image + jnp.where(ok, model, 0), sci.image)
    if _same_edges(plan.fit_y, plan.diag_y) and _same_edges(plan.fit_x, plan.diag_x):
        z_diag, valid_diag = value, valid
    else:
        z_diag, _, _, n_diag = grid_statistics(diff, None, plan.diag_y, plan.diag_x, *stat)
        valid_diag = n_diag >= 2
    nan = jnp.asarray(jnp.nan, dtype=dtype)
    centres = [jnp.asarray(centre_pixels(e), dtype) for e in (plan.diag_y, plan.diag_x)]
    rms = jnp.where(ok, fit_rms(z_diag, valid_diag, basis.evaluate(coef, *centres)), nan)
    mse = jnp.where(ok, matched_mse(diff, model, usable), nan)
    var = jnp.where(ok, fit["diff_im_var"], nan)
    status = jnp.where(ok & (jnp.isnan(rms) | jnp.isnan(var)), NAN_DIAGNOSTIC, status)
    sigma_u = 1 / jnp.sqrt(mean_w) if config.approxWeighting else jnp.sqrt(chi2_red)
    ill = fit_roundoff(fit, jnp.where(ok, coef, 0).reshape(-1), sigma_u) > ROUNDOFF_LIMIT
    status = jnp.where((status == SUCCESS) & ill, ILL_CONDITIONED, status)
    grid_err = jnp.where(valid, err, jnp.nan)
    grid_val = jnp.where(valid, value, jnp.nan)
    return dict(
        coefficients=coef,
        covariance=jnp.where(ok, cov, jnp.nan),
        matched=matched,
        fitRMS=rms,
        matchedMSE=mse,
        diffImVar=var,
        status=status.astype(jnp.int32),
        grid_values=grid_val,
        grid_errors=grid_err,
        grid_weights=sqrt_w * sqrt_w,
        effective_order=orders,
        min_sampled=m_min.astype(jnp.int32),
    )


def _same_edges(a, b) -> bool:
    return len(a[0]) == len(b[0]) and all(np.array_equal(x, y) for x, y in zip(a, b))


@filter_jit
def _match_batch(ref, sci, hyper, bits_ref, bits_sci, config, bin_size):
    plan = plan_fit(config, ref.image.shape, bin_size)
    fn = lambda s: _match_one(ref, s, hyper, bits_ref, bits_sci, config, plan)  # noqa: E731
    return jax.vmap(fn)(sci), plan.basis


def match(
    reference: Exposure,
    science: Exposure,
    config: MatchBackgroundsConfig | None = None,
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
        config: `MatchBackgroundsConfig` (static; default LSST settings).
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

    `ValueError`/`TypeError` (eagerly, from shapes and config): wrong types,
    mismatched shapes, an unknown bad mask plane, a non-positive binSize, an order
    too high for the grid (polynomial path), too few bins for the interpolation
    style (spline path, unless REDUCE_INTERP_ORDER).
    """
    config = MatchBackgroundsConfig() if config is None else config
    if not isinstance(config, MatchBackgroundsConfig):
        raise TypeError(f"config must be a MatchBackgroundsConfig, got {type(config).__name__}")
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
    dtype = _working_dtype(config, reference, science)
    reference, science = _cast(reference, dtype), _cast(science, dtype)
    bits_ref = reference.bitmask(config.badMaskPlanes)
    bits_sci = science.bitmask(config.badMaskPlanes)
    hyper = _hyperparameters(config, dtype, roughness, num_sigma_clip, clip_sharpness)
    plan = plan_fit(config, reference.image.shape, config.binSize)  # eager shape checks
    check_match_arguments(config, roughness, num_sigma_clip, clip_sharpness, plan)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    run = lambda sub: _match_batch(  # noqa: E731
        reference, sub, hyper, bits_ref, bits_sci, config, config.binSize
    )
    if shard:
        run = _sharded(run, jax.local_devices())
    out, basis = _in_chunks(run, science, chunk_size)
    out["bin_size"] = jnp.full(out["status"].shape, config.binSize, dtype=jnp.int32)
    traced = isinstance(out["status"], jax.core.Tracer)
    if config.usePolynomial and config.undersampleStyle == "INCREASE_NXNYSAMPLE":
        if traced:
            raise TypeError(
                "undersampleStyle='INCREASE_NXNYSAMPLE' re-bins data-dependently and cannot "
                "run under jit/grad/vmap; use REDUCE_INTERP_ORDER or THROW_EXCEPTION there"
            )
        out = _increase_nxnysample(reference, science, hyper, bits_ref, bits_sci, config, out)
    result = MatchResult(
        model=BackgroundModel(out["coefficients"], basis),
        **{k: v for k, v in out.items() if k != "coefficients"},
    )
    if raise_on_failure and not traced:
        check_result(result)
    return result


def _hyperparameters(config, dtype, roughness, num_sigma_clip, clip_sharpness):
    """The continuous hyperparameters as arrays (defaults from the config)."""
    rough = config.splineRoughness if roughness is None else roughness
    nsig = config.numSigmaClip if num_sigma_clip is None else num_sigma_clip
    sharp = config.clipSharpness if clip_sharpness is None else clip_sharpness
    return dict(
        roughness=jnp.asarray(rough, dtype=dtype),
        num_sigma_clip=jnp.asarray(nsig, dtype=dtype),
        clip_sharpness=None if sharp is None else jnp.asarray(sharp, dtype=dtype),
    )


def _pad_batch(exposures: Exposure, size: int) -> Exposure:
    """Pad a batch to ``size`` exposures with copies of the first (results dropped)."""
    n = exposures.image.shape[0]
    if n == size:
        return exposures
    index = np.concatenate([np.arange(n), np.zeros(size - n, dtype=int)])
    return jax.tree.map(lambda a: a[index], exposures)


def _in_chunks(run, science: Exposure, chunk_size: int | None):
    """``run`` over chunks of the science batch, concatenated (one compilation)."""
    n = science.image.shape[0]
    if chunk_size is None or chunk_size >= n:
        return run(science)
    outs, basis = [], None
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sub = jax.tree.map(lambda a: a[start:stop], science)
        out, basis = run(_pad_batch(sub, chunk_size))
        outs.append({k: v[: stop - start] for k, v in out.items()})
    return {k: jnp.concatenate([o[k] for o in outs]) for k in outs[0]}, basis


def _sharded(run, devices):
    """Wrap ``run`` so the science batch is split over ``devices`` along N."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(devices), ("exposures",))
    split = NamedSharding(mesh, PartitionSpec("exposures"))

    def sharded(science):
        n = science.image.shape[0]
        size = -(-n // len(devices)) * len(devices)
        padded = jax.device_put(_pad_batch(science, size), split)
        out, basis = run(padded)
        return {k: v[:n] for k, v in out.items()}, basis

    return sharded


def _increase_nxnysample(reference, science, hyper, bits_ref, bits_sci, config, out):
    """Re-bin the undersampled exposures once with ``(m · binSize) // (order + 1)``."""
    status = np.asarray(out["status"])
    m = np.asarray(out["min_sampled"])
    order = max(_orders(config))
    retry = np.flatnonzero((status == UNDERSAMPLED) & (m > 0))
    new_sizes = (m[retry] * config.binSize) // (order + 1)
    throw = config.replace(undersampleStyle="THROW_EXCEPTION")
    for size in np.unique(new_sizes):
        idx = retry[new_sizes == size]
        try:
            if size < 1:
                raise ValueError("bin size below one pixel")
            plan_fit(throw, reference.image.shape, int(size))
        except ValueError:
            continue  # still undersampled: the status stays UNDERSAMPLED
        sub = jax.tree.map(lambda a: a[idx], science)
        redo, _ = _match_batch(reference, sub, hyper, bits_ref, bits_sci, throw, int(size))
        for key, val in redo.items():
            if out[key].shape[1:] == val.shape[1:]:
                out[key] = out[key].at[idx].set(val)
        # A re-binned grid left with no valid bin is still an undersampling failure.
        out["status"] = (
            out["status"]
            .at[idx]
            .set(jnp.where(redo["status"] == NO_OVERLAP, UNDERSAMPLED, redo["status"]))
        )
        out["bin_size"] = out["bin_size"].at[idx].set(int(size))
    return out


def check_result(result: MatchResult) -> None:
    """Raise `ValueError` naming each exposure whose fit failed, and why.

    Status 4 (``NAN_DIAGNOSTIC``: model valid, a diagnostic NaN) is not a failure.
    """
    status = np.asarray(result.status)
    warn_ill_conditioned(status)
    bad = np.flatnonzero(~np.asarray(fitted(status)))
    if bad.size:
        lines = [f"exposure {i}: {STATUS_MESSAGES[int(status[i])]}" for i in bad]
        raise ValueError("background matching failed for " + "; ".join(lines))


def _working_dtype(config, *exposures):
    if config.dtype is not None:
        return jnp.dtype(config.dtype)
    return jnp.result_type(*(e.image.dtype for e in exposures))


def _cast(exp: Exposure, dtype) -> Exposure:
    if exp.image.dtype == dtype and exp.variance.dtype == dtype:
        return exp
    return dataclasses.replace(
        exp, image=exp.image.astype(dtype), variance=exp.variance.astype(dtype)
    )
