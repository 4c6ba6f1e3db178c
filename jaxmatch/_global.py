"""Global matching: every exposure's background model from every overlap at once.

Formulation (pairwise differences). For exposures ``x_i`` with models
``m_i = B c_i`` (the core's bases; ``x_i + m_i`` is the matched image), every
overlapping pair ``(i, j)`` gives the binned difference, exactly as the core bins
``ref - sci``:

    z_ij = bin(x_i - x_j)  ≈  m_j - m_i        (same masks, clipping, errors e_ij)

and the joint problem is

    min_c  Σ_pairs Σ_bins w_ij (z_ij - B (c_j - c_i))²  +  (λ + λ_floor) Σ_i P(c_i)  +  ε Σ_i |c_i|²

with ``w = 1/e²`` (1 without `approxWeighting`), normalised by one global mean so
that λ keeps the core's meaning. Why pairs and not the per-bin nuisance
formulation (``bin(x_i) = sky_b - m_i``): the nuisance form bins each exposure on
its own pixels, so sources and masks do not cancel between exposures unless
every exposure uses the same pixels of a bin, which partial coverage forbids;
the pairwise form bins each difference on the pixels both exposures can use,
so masks and clipping carry over from the core unchanged. Its cost is one
binning pass per pair; ``globalMaxPartners`` keeps only each exposure's
best-overlapping partners, making the work linear in N.

The solve. Each pair couples blocks ``(i, j)`` of a graph Laplacian of K×K
blocks. No normal matrix of the raw basis and no ``(N·bins, N·K)`` design matrix
is formed: `jaxmatch._solve.solve_pair_blocks` whitens each exposure's basis by
a QR, compresses each pair's rows to 2K by a QR, and solves the whitened
least-squares problem by CGLS preconditioned with a Cholesky factor of the
whitened block Laplacian, gauge exposures eliminated (docs/algorithm.md §13).

Gauge. Differences fix the models only up to a common offset model per group of
connected exposures. ``globalGauge="REFERENCE"`` (default): the gauge exposure's
model is 0 (the chosen reference in its group, comparable with single-reference
mode); ``"MEAN"``: the mean model of each group is 0. Exposures are grouped by
the overlap graph (pairs with at least one valid bin); a group without the
reference takes its lowest-index exposure as its gauge (``"REFERENCE"``), and
isolated exposures are failures (status ``NO_OVERLAP``).

Uncertainties. The coefficient covariance is the inverse of the normal matrix
restricted to the free exposures (from the same factor) divided by the weight
normaliser — i.e. in data units when the bin errors are trusted (weights from
the bins' own scatter); without `approxWeighting` (unit weights) it is scaled by
the reduced χ² of the fit. The NUISANCE weights reproduce the per-bin likelihood
only when every pair of exposures that share a bin is used (the default); with
``globalMaxPartners`` some pairs are dropped, the weights and the degrees of
freedom no longer match it, and ``chi2_reduced`` falls roughly with the fraction
of pairs kept (0.97 → 0.25 from all pairs to 476 of 2016 in the N = 64
benchmark): the models stay right, their covariances are then approximate.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, cast

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._batch import working_dtype
from ._binning import CellStats, grid_statistics
from ._compile import filter_jit
from ._config import MatchBackgroundsConfig
from ._diagnostics import matched_mse
from ._exposure import Exposure, usable_mask
from ._fit import hyperparameters, prepare_fit
from ._maskbits import with_canonical_planes
from ._model import BackgroundModel
from ._plan import design_matrix, penalty_rows, plan_fit
from ._solve import (
    GLOBAL_RIDGE_PER_CELL,
    RIDGE_PER_CELL,
    BlockSolution,
    global_roundoff,
    regulariser_rows,
    solve_pair_blocks,
)
from ._status import SUCCESS, check_result, final_status, fit_status
from ._validate import check_match_arguments

_log = logging.getLogger(__name__)


class GlobalResult(eqx.Module):
    """Results of `match_global` / `match_all` for N exposures (leading axis N).

    - ``model``: `BackgroundModel` (coefficients ``(N, ky, kx)``); add to each image.
    - ``matched``: ``x_i + m_i`` ``(N, H, W)`` (unchanged where the fit failed).
    - ``covariance``: ``(N, K, K)`` coefficient covariance (flattened ``C[p, q]``).
    - ``fitRMS``: RMS of bin value minus model difference over the valid bins of
      every pair with the exposure; ``matchedMSE``: mean over those pairs of
      ``mean((x_i + m_i - x_j - m_j)²)`` on usable pixels; ``diffImVar``: mean over
      those pairs of the clipped mean of the difference's variance.
    - ``status`` ``(N,)``; ``group`` ``(N,)`` connected-group label (-1: isolated);
      ``gauge`` ``(N,)`` True for the exposures whose model the gauge fixes to 0
      (``"REFERENCE"``); ``pairs`` ``(P, 2)`` the pairs used; ``chi2_reduced``.
    - Disconnected groups (docs/algorithm.md §13): ``gauge_index`` ``(N,)`` the
      exposure each one was matched to — the gauge exposure of its group, whose
      model is 0 (with ``globalGauge="MEAN"``: -1, the group's mean is 0; -1 for
      an isolated exposure); ``matched_to_reference`` ``(N,)`` True for the
      exposures in the reference's group; ``groups_unmatched`` ``()`` True when
      the exposures form more than one group: the groups' backgrounds are not
      matched to each other, and a coadd of all of them would mix them.
    """

    model: BackgroundModel
    matched: Float[Array, "N H W"]
    covariance: Float[Array, "N K K"]
    fitRMS: Float[Array, " N"]
    matchedMSE: Float[Array, " N"]
    diffImVar: Float[Array, " N"]
    status: Int[Array, " N"]
    group: Int[Array, " N"]
    gauge: Array
    pairs: Int[Array, "P 2"]
    chi2_reduced: Float[Array, ""]
    gauge_index: Int[Array, " N"]
    matched_to_reference: Array
    groups_unmatched: Array


def pair_overlaps(exposures: Exposure, config: MatchBackgroundsConfig) -> np.ndarray:
    """Number of bins that both exposures of each pair can use, ``(N, N)`` (host).

    A bin counts when the two exposures share at least 2 usable pixels in it (the
    core's valid-bin rule for their difference). One jitted pass over the masks.
    """
    plan_fit(config, exposures.image.shape[1:], config.binSize)  # eager shape checks
    bits = exposures.bitmask(config.badMaskPlanes)
    return np.asarray(_overlaps(exposures.mask, exposures.image, bits, config))


@filter_jit
def _overlaps(mask, image, bits, config):
    plan = plan_fit(config, image.shape[1:], config.binSize)
    fit_y, fit_x = plan.fit_y, plan.fit_x
    usable = usable_mask(image, (mask, bits))

    def row(u_i):
        def count(u_j):
            stats = grid_statistics(
                jnp.zeros(u_i.shape, jnp.float32), u_i & u_j, fit_y, fit_x, "MEAN", 3.0, 0
            )
            return jnp.sum(cast(CellStats, stats)[3] >= 2)

        return jax.lax.map(count, usable)

    return jax.lax.map(row, usable)


def choose_pairs(overlaps: np.ndarray, max_partners: int | None = None) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, with overlapping bins; optionally each exposure's
    ``max_partners`` best-overlapping partners only (their union)."""
    n = overlaps.shape[0]
    keep = set()
    for i in range(n):
        partners = [
            j for j in np.argsort(-overlaps[i], kind="stable") if j != i and overlaps[i, j] > 0
        ]
        if max_partners is not None:
            partners = partners[:max_partners]
        keep.update((min(i, j), max(i, j)) for j in partners)
    return np.array(sorted(keep), dtype=np.int64).reshape(-1, 2)


def connected_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label per exposure (-1 for an exposure in no pair)."""
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in pairs:
        parent[find(int(i))] = find(int(j))
    roots, labels = {}, np.full(n, -1, dtype=np.int64)
    linked = set(pairs.reshape(-1).tolist())
    for i in range(n):
        if i in linked:
            labels[i] = roots.setdefault(find(i), len(roots))
    return labels


def gauge_exposures(groups: np.ndarray, reference: int) -> np.ndarray:
    """The exposure whose model is fixed to 0 in each group: the reference in its
    group, the lowest index in the others. Returns a bool mask ``(N,)``."""
    gauge = np.zeros(len(groups), dtype=bool)
    for g in np.unique(groups[groups >= 0]):
        members = np.flatnonzero(groups == g)
        gauge[reference if reference in members else members[0]] = True
    return gauge


def match_global(
    exposures: Exposure,
    pairs: np.ndarray,
    groups: np.ndarray,
    gauge: np.ndarray,
    config: MatchBackgroundsConfig,
    *,
    roughness=None,
    num_sigma_clip=None,
    clip_sharpness=None,
    covariance: bool = True,
    reference: int | None = None,
) -> GlobalResult:
    """The joint solve (jitted, differentiable in the images and λ, clip parameters).

    Arguments:
        exposures: a batch ``(N, H, W)``.
        pairs: ``(P, 2)`` int pairs ``(i, j)`` (static: they fix the shapes).
        groups: ``(N,)`` connected-group labels from `connected_groups` (static).
        gauge: ``(N,)`` bool, the gauge exposure of each group (static; used with
            ``config.globalGauge == "REFERENCE"``).
        config: the `MatchBackgroundsConfig` (static).
        covariance: also compute the coefficient covariance (an inverse of the
            (N·K)² system: skip it for many spline knots; NaN when skipped).
        reference: the reference exposure (for ``matched_to_reference``); default
            the first gauge exposure.
    """
    if len(exposures.batch_shape) != 1:
        raise ValueError(f"exposures must be a batch (N, H, W), got {exposures.image.shape}")
    if config.usePolynomial and config.undersampleStyle == "INCREASE_NXNYSAMPLE":
        raise ValueError(
            "INCREASE_NXNYSAMPLE is not available in GLOBAL mode; use REDUCE_INTERP_ORDER"
        )
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        raise ValueError("no overlapping pairs: global matching needs at least one overlap")
    dtype = working_dtype(config, exposures)
    exposures = jax.tree.map(lambda a: a.astype(dtype) if a.dtype.kind == "f" else a, exposures)
    hyper = hyperparameters(config, dtype, roughness, num_sigma_clip, clip_sharpness)
    plan = plan_fit(config, exposures.image.shape[1:], config.binSize)  # eager shape checks
    check_match_arguments(config, roughness, num_sigma_clip, clip_sharpness, plan)
    # The bit mask as traced data: mask-plane dictionaries do not recompile (_maskbits).
    bits = jnp.asarray(exposures.bitmask(config.badMaskPlanes), jnp.int32)
    exposures = with_canonical_planes(exposures)
    structure = (
        tuple(map(tuple, pairs.tolist())),
        tuple(int(g) for g in groups),
        tuple(bool(g) for g in gauge),
        int(np.flatnonzero(gauge)[0]) if reference is None else int(reference),
    )
    return _match_global(exposures, hyper, bits, config, structure, covariance)


@filter_jit
def _match_global(exposures, hyper, bits, config, structure, with_covariance):
    pairs = np.asarray(structure[0], dtype=np.int64).reshape(-1, 2)
    groups, gauge = np.asarray(structure[1]), np.asarray(structure[2])
    n = exposures.image.shape[0]
    shape = exposures.image.shape[1:]
    dtype = exposures.image.dtype
    plan = plan_fit(config, shape, config.binSize)
    basis = plan.basis
    ky, kx = basis.coefficient_shape
    pi, pj = jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1])

    data = pair_data(exposures, pairs, hyper, bits, config, plan)
    z, valid, pair_var = data.z, data.valid, data.pair_var
    w = pair_weights(config, pi, pj, n, data.e2, data.w_pair, valid)
    design = design_matrix(plan, dtype)
    n_valid = jnp.sum(valid)
    sol = solve_pairs(w, z, valid, pairs, groups, gauge, hyper, config, plan, n, with_covariance)
    coef, cov, act, under = sol.coef, sol.cov, sol.active, sol.undersampled
    valid_union, w_bar, n_constraints = sol.valid_union, sol.w_bar, sol.n_constraints

    # Residuals of every pair's bins; reduced χ² and fitRMS per exposure.
    pred = (coef[pairs[:, 1]] - coef[pairs[:, 0]]) @ design.T
    resid = jnp.where(valid, z - pred, 0.0)
    chi2 = jnp.sum(w * resid**2) / w_bar
    # Independent data: one per valid pair-bin (PAIR), or N_b - 1 per bin seen by
    # N_b exposures (NUISANCE: the pairs of a bin share the exposures' noise).
    if config.globalWeights == "PAIR":
        n_data = n_valid
    else:
        n_data = jnp.sum(jnp.maximum(jnp.sum(valid_union.reshape(n, -1), axis=0) - 1, 0))
    dof = jnp.maximum(n_data - (jnp.sum(act) - n_constraints), 1).astype(dtype)
    chi2_red = chi2 / dof * w_bar  # in units of the weights (1 for calibrated errors)
    if not config.approxWeighting:
        cov = cov * chi2 / dof
    sq = jnp.sum(resid**2, axis=1)
    cnt = jnp.sum(valid, axis=1).astype(dtype)
    sq_i = jnp.zeros(n, dtype).at[pi].add(sq).at[pj].add(sq)
    cnt_i = jnp.zeros(n, dtype).at[pi].add(cnt).at[pj].add(cnt)
    rms = jnp.sqrt(sq_i / jnp.maximum(cnt_i, 1))

    status = fit_status(cnt_i == 0, under, jnp.all(jnp.isfinite(coef), axis=1))
    ok = status == SUCCESS
    coef = jnp.where(ok[:, None], coef, jnp.nan).reshape(n, ky, kx)
    model = BackgroundModel(coef, basis)

    # Pass 2 over pairs: matched images agree? (pixel-level MSE of each pair)
    h_, w_ = shape
    yy, xx = jnp.arange(h_, dtype=dtype), jnp.arange(w_, dtype=dtype)

    def pair_mse(ij):
        xi, xj = exposures[ij[0]], exposures[ij[1]]
        diff = xi.image - xj.image
        usable = usable_mask(diff, (xi.mask, bits), (xj.mask, bits))
        mdiff = basis.evaluate(coef[ij[1]] - coef[ij[0]], yy, xx)
        return matched_mse(diff, mdiff, usable)

    mse = jax.lax.map(pair_mse, jnp.stack([pi, pj], axis=1))
    npair = jnp.zeros(n, dtype).at[pi].add(1.0).at[pj].add(1.0)
    mse_i = jnp.zeros(n, dtype).at[pi].add(mse).at[pj].add(mse) / jnp.maximum(npair, 1)
    var_i = jnp.zeros(n, dtype).at[pi].add(pair_var).at[pj].add(pair_var) / jnp.maximum(npair, 1)
    images = model.evaluate()
    matched = jnp.where(
        ok[:, None, None],
        exposures.image + jnp.where(ok[:, None, None], images, 0),
        exposures.image,
    )
    nan = jnp.asarray(jnp.nan, dtype)
    # Rounding error of the solve vs the statistical 1σ (docs/algorithm.md §13).
    noise2 = (1.0 if config.approxWeighting else chi2 / dof) / w_bar
    roundoff = global_roundoff(sol.blocks, groups, noise2, dtype)
    status = final_status(status, roundoff, rms, mse_i, var_i)
    return GlobalResult(
        model=model,
        matched=matched,
        covariance=jnp.where(ok[:, None, None], cov, nan),
        fitRMS=jnp.where(ok, rms, nan),
        matchedMSE=jnp.where(ok, mse_i, nan),
        diffImVar=jnp.where(ok, var_i, nan),
        status=status,
        group=jnp.asarray(groups, jnp.int32),
        gauge=jnp.asarray(gauge),
        pairs=jnp.asarray(pairs, jnp.int32),
        chi2_reduced=chi2_red,
        gauge_index=jnp.asarray(gauge_indices(groups, gauge, config.globalGauge), jnp.int32),
        matched_to_reference=jnp.asarray(_in_reference_group(groups, gauge, structure)),
        groups_unmatched=jnp.asarray(len(np.unique(groups[groups >= 0])) > 1),
    )


def gauge_indices(groups: np.ndarray, gauge: np.ndarray, mode: str = "REFERENCE") -> np.ndarray:
    """The gauge exposure of each exposure's group ``(N,)`` (-1: isolated, or
    ``mode == "MEAN"``, where no exposure is the gauge)."""
    groups, gauge = np.asarray(groups), np.asarray(gauge, bool)
    out = np.full(len(groups), -1, dtype=np.int64)
    if mode != "REFERENCE":
        return out
    for label in np.unique(groups[groups >= 0]):
        members = np.flatnonzero(groups == label)
        pinned = members[gauge[members]]
        out[members] = pinned[0] if pinned.size else -1
    return out


def _in_reference_group(groups, gauge, structure) -> np.ndarray:
    """True for the exposures in the reference's group (``structure[3]``: the
    reference index; the first gauge exposure when not given)."""
    groups = np.asarray(groups)
    reference = structure[3] if len(structure) > 3 else int(np.flatnonzero(gauge)[0])
    if groups[reference] < 0:
        return np.arange(len(groups)) == reference
    return groups == groups[reference]


def group_summary(result: GlobalResult) -> str | None:
    """One log line describing the groups of a global result, or None when every
    exposure is in one group (host side)."""
    groups = np.asarray(result.group)
    labels = sorted(set(groups[groups >= 0].tolist()))
    isolated = np.flatnonzero(groups < 0).tolist()
    if len(labels) <= 1 and not isolated:
        return None
    gauges = np.asarray(result.gauge_index)
    parts = []
    for label in labels:
        members = np.flatnonzero(groups == label).tolist()
        gauge = int(gauges[members[0]])
        name = gauge if gauge >= 0 else "their mean"
        parts.append(f"group {label}: exposures {members} matched to {name}")
    count = f"{len(labels)} groups with no overlap between them" if len(labels) > 1 else "1 group"
    text = f"global matching: {count}: " + "; ".join(parts)
    if len(labels) > 1:
        text += "; only the reference's group is matched to the reference, the groups are "
        text += "not matched to each other (do not coadd them together)"
    if isolated:
        text += f"; exposure(s) {isolated} overlap no other exposure (not matched)"
    return text


class PairData(eqx.Module):
    """Every pair's binned difference ``x_i - x_j`` (`pair_data`), M = ny·nx bins.

    Attributes:
        z: ``(P, M)`` bin values [ADU] (0 where not valid).
        e2: ``(P, M)`` squared bin errors [ADU²] (0 where not valid).
        w_pair: ``(P, M)`` the core's raw weights ``1/e²`` (1 without
            ``approxWeighting``; 0 where not valid).
        valid: ``(P, M)`` bins with at least 2 usable pixels.
        pair_var: ``(P,)`` clipped mean of the difference's variance plane
            (``diffImVar`` of the pair) [ADU²].
    """

    z: Float[Array, "P M"]
    e2: Float[Array, "P M"]
    w_pair: Float[Array, "P M"]
    valid: Bool[Array, "P M"]
    pair_var: Float[Array, " P"]


class GlobalSolution(eqx.Module):
    """What `solve_pairs` returns (N exposures, K terms each).

    Attributes:
        coef: ``(N, K)`` coefficients [ADU per unit basis function].
        cov: ``(N, K, K)`` their covariance in data units for calibrated bin
            errors (NaN unless asked for; the caller scales it by the reduced χ²
            without ``approxWeighting``).
        active: ``(N, K)`` 1.0 for the active terms, 0.0 for the others.
        undersampled: ``(N,)`` the undersampling rule flags the exposure.
        valid_union: ``(N, ny, nx)`` bins valid in at least one of the exposure's pairs.
        w_bar: ``()`` the weight normaliser (mean weight of the valid pair bins).
        blocks: the block solve's record (rounding-error estimates, `BlockSolution`).
        n_constraints: gauge rows (K per pinned exposure), a trace-time int.
    """

    coef: Float[Array, "N K"]
    cov: Float[Array, "N K K"]
    active: Float[Array, "N K"]
    undersampled: Bool[Array, " N"]
    valid_union: Bool[Array, "N ny nx"]
    w_bar: Float[Array, ""]
    blocks: BlockSolution
    n_constraints: int = eqx.field(static=True)


def pair_data(exposures, pairs, hyper, bits, config, plan) -> PairData:
    """Pass 1 over the pairs: bin every ``x_i - x_j`` as the core bins ``ref - sci``
    (`prepare_fit` per pair, ``jax.lax.map`` over the ``(P, 2)`` ``pairs``)."""
    pairs = jnp.asarray(np.asarray(pairs).reshape(-1, 2))

    def pair_bins(ij):
        xi, xj = exposures[ij[0]], exposures[ij[1]]
        fit = prepare_fit(xi, xj, hyper, bits, bits, config, plan, with_diff_im_var=True)
        grid = fit.grid
        e2 = jnp.where(grid.valid, grid.err**2, 0.0).reshape(-1)
        z, w_raw, valid = grid.z.reshape(-1), grid.w_raw.reshape(-1), grid.valid.reshape(-1)
        return z, e2, w_raw, valid, grid.diff_im_var

    z, e2, w_pair, valid, pair_var = jax.lax.map(pair_bins, pairs)
    return PairData(z=z, e2=e2, w_pair=w_pair, valid=valid, pair_var=pair_var)


def solve_pairs(
    w, z, valid, pairs, groups, gauge, hyper, config, plan, n, with_covariance
) -> GlobalSolution:
    """The joint least-squares solve from per-pair bins (weights ``w`` ``(P, M)``).

    The problem of the module docstring, by `jaxmatch._solve.solve_pair_blocks`
    (per-exposure whitening by QR, the whitened block system of the overlap graph
    by Cholesky, Newton steps on the original residual; docs/algorithm.md §13), gauge exposures
    eliminated. ``"MEAN"``: solved with each group's gauge exposure pinned, then
    each group's mean model is subtracted from its members (the differences, hence
    the matched backgrounds relative to each other, are those of ``"REFERENCE"``).

    Returns a `GlobalSolution`.
    """
    dtype = z.dtype
    pairs = np.asarray(pairs).reshape(-1, 2)
    pi, pj = jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1])
    basis = plan.basis
    k = int(np.prod(basis.coefficient_shape))
    design = design_matrix(plan, dtype)
    n_valid = jnp.sum(valid)
    w_bar = jnp.sum(w) / jnp.maximum(n_valid, 1).astype(dtype)
    w_bar = jnp.where(w_bar > 0, w_bar, 1.0)

    # Per-exposure valid-bin union, active terms, status (as in the core).
    valid_union = jnp.zeros((n,) + valid.shape[1:], bool)
    valid_union = valid_union.at[pi].max(valid).at[pj].max(valid)
    valid_union = valid_union.reshape((n, len(plan.fit_y[0]), len(plan.fit_x[0])))
    penalty, floor, active, under = _penalty_and_terms(config, plan, valid_union, dtype)
    sqrt_mu = jnp.sqrt(hyper.roughness + floor).astype(dtype)
    bins_of = jnp.sum(valid_union.reshape(n, -1), axis=1)
    # Chebyshev: the larger global ε (see GLOBAL_RIDGE_PER_CELL); splines' roughness
    # floor already damps the modes no overlap sees.
    ridge = GLOBAL_RIDGE_PER_CELL if config.usePolynomial else RIDGE_PER_CELL
    sqrt_eps = jnp.sqrt(ridge * jnp.maximum(bins_of, 1).astype(dtype))
    act = active.astype(dtype)  # (N, K)
    regulariser = jax.vmap(lambda se, a: regulariser_rows(penalty, sqrt_mu, se, a))(sqrt_eps, act)

    # Pinned: one gauge exposure per group (both gauges) and every isolated one.
    groups, gauge = np.asarray(groups), np.asarray(gauge, bool)
    pinned = gauge | (groups < 0)
    # Weights normalised by their mean so that λ keeps the core's scale.
    sol = solve_pair_blocks(
        design,
        jnp.where(valid, w, 0.0) / w_bar,
        jnp.where(valid, z, 0.0),
        pairs,
        regulariser,
        act,
        pinned,
        with_covariance=with_covariance,
        mix=_mean_gauge(groups) if config.globalGauge == "MEAN" else None,
    )
    n_constraints = k * (len(np.unique(groups[groups >= 0])) + int(np.sum(groups < 0)))
    return GlobalSolution(
        coef=sol.coef,
        cov=sol.cov / w_bar,
        active=act,
        undersampled=under,
        valid_union=valid_union,
        w_bar=w_bar,
        blocks=sol,
        n_constraints=n_constraints,
    )


def _mean_gauge(groups) -> np.ndarray:
    """``I - S`` ``(N, N)``, ``S`` averaging each group's members: subtracting it
    makes each group's mean model 0 (isolated exposures are kept as they are)."""
    n = len(groups)
    shift = np.zeros((n, n))
    for label in np.unique(groups[groups >= 0]):
        members = np.flatnonzero(groups == label)
        shift[np.ix_(members, members)] = 1.0 / len(members)
    return np.eye(n) - shift


def pair_weights(config, pi, pj, n, e2, w_pair, valid) -> Float[Array, "P M"]:
    """Bin weights of every pair, ``(P, M)``, from `pair_data`'s ``e2``, ``w_pair``
    and ``valid`` (``pi``, ``pj`` ``(P,)``: the pairs' exposures; ``n``: N).

    ``globalWeights="PAIR"``: the core's ``1/e²`` of each pair's own bins, as if the
    pairs were independent (with only pairs against one reference this is exactly
    the single-reference fit). ``"NUISANCE"`` (default): the pairs share exposures,
    so their differences are correlated; with per-exposure bin variances ``v_i``
    (estimated as half the mean ``e²`` of the exposure's pairs in that bin,
    ``w_i = 1/v_i``) the weight ``w_i w_j / Σ_k w_k`` makes the sum over all pairs
    of a bin equal the per-bin nuisance likelihood ``Σ_i w_i (u_i - ū)²`` (with
    ``u_i = bin(x_i) + m_i``), whose covariance is calibrated. For one pair in a
    bin both give ``1/e²``.
    """
    if config.globalWeights == "PAIR":
        return jnp.where(valid, w_pair, 0.0)
    v_sum = jnp.zeros((n,) + e2.shape[1:], e2.dtype).at[pi].add(e2).at[pj].add(e2)
    count = jnp.zeros((n,) + e2.shape[1:], e2.dtype).at[pi].add(valid).at[pj].add(valid)
    if config.approxWeighting:
        v = v_sum / (2.0 * jnp.maximum(count, 1.0))
        w_exp = jnp.where(count > 0, 1.0 / jnp.where(count > 0, v, 1.0), 0.0)
    else:
        w_exp = (count > 0).astype(e2.dtype)
    total = jnp.sum(w_exp, axis=0)
    return jnp.where(valid, w_exp[pi] * w_exp[pj] / jnp.where(total > 0, total, 1.0), 0.0)


def _penalty_and_terms(config, plan, valid_union, dtype):
    """Penalty rows, λ_floor, active terms ``(N, K)`` and undersampled flags ``(N,)``."""
    rows, floor = penalty_rows(plan.basis, dtype)
    n = len(valid_union)
    design = design_matrix(plan, dtype)
    terms = jax.vmap(lambda v: plan.basis.active_terms(config, v, design))(valid_union)
    active = jnp.broadcast_to(
        jnp.asarray(terms.active).reshape(-1, rows.shape[1]), (n, rows.shape[1])
    )
    return rows, floor, active, terms.undersampled


class GlobalStructure(NamedTuple):
    """The overlap structure of a batch (host NumPy arrays; unpacks as a tuple).

    Attributes:
        pairs: ``(P, 2)`` int pairs ``(i, j)``, ``i < j``.
        groups: ``(N,)`` connected-group label (-1: isolated).
        gauge: ``(N,)`` bool, the gauge exposure of each group.
    """

    pairs: np.ndarray
    groups: np.ndarray
    gauge: np.ndarray


def global_structure(
    exposures: Exposure, config: MatchBackgroundsConfig, reference: int = 0
) -> GlobalStructure:
    """``(pairs, groups, gauge)`` of a batch for global matching (host side), a
    `GlobalStructure`.

    From the masks only: `pair_overlaps` → `choose_pairs` (``globalMaxPartners``)
    → `connected_groups` → `gauge_exposures`. Compute it once outside `jit` and
    pass it to `match_global` / `jaxmatch.heldout_loss`.
    """
    n = exposures.image.shape[0]
    pairs = choose_pairs(pair_overlaps(exposures, config), config.globalMaxPartners)
    groups = connected_groups(n, pairs)
    return GlobalStructure(pairs, groups, gauge_exposures(groups, reference))


def match_all(
    exposures: Exposure,
    config: MatchBackgroundsConfig | None = None,
    *,
    reference: int = 0,
    roughness=None,
    num_sigma_clip=None,
    clip_sharpness=None,
    covariance: bool = True,
    raise_on_failure: bool = True,
) -> GlobalResult:
    """Global matching of a batch: overlaps → pairs → groups → `match_global`.

    ``reference`` is the gauge exposure of its group. Disconnected groups are
    reported with a warning (`group_summary`; ``result.group``, ``gauge_index``,
    ``matched_to_reference``, ``groups_unmatched``); isolated exposures fail
    (``NO_OVERLAP``). Outside a transformation, ``raise_on_failure`` raises
    `ValueError` naming failed exposures.
    """
    config = MatchBackgroundsConfig() if config is None else config
    if not isinstance(exposures, Exposure) or len(exposures.batch_shape) != 1:
        raise TypeError("exposures must be a batch Exposure (N, H, W); use stack_exposures")
    n = exposures.image.shape[0]
    if not 0 <= reference < n:
        raise ValueError(f"reference index {reference} is not in 0..{n - 1}")
    pairs, groups, gauge = global_structure(exposures, config, reference)
    result = match_global(
        exposures,
        pairs,
        groups,
        gauge,
        config,
        roughness=roughness,
        num_sigma_clip=num_sigma_clip,
        clip_sharpness=clip_sharpness,
        covariance=covariance,
        reference=reference,
    )
    if not isinstance(result.status, jax.core.Tracer):
        note = group_summary(result)
        if note:
            _log.warning("%s", note)
    if raise_on_failure and not isinstance(result.status, jax.core.Tracer):
        check_result(result)
    return result


def model_uncertainty(
    model: BackgroundModel, covariance: Float[Array, "... K K"], y=None, x=None
) -> Float[Array, "... ny nx"]:
    """1σ uncertainty of the model at pixel rows ``y`` × columns ``x``.

    ``σ²(y, x) = b(y, x)ᵀ Cov b(y, x)`` with ``b = Y(y) ⊗ X(x)``, computed
    separably (``O(ny · nx · kx²)``), never as an ``(ny·nx, K)`` matrix. Linear
    bases only (for ``AKIMA_SPLINE`` the natural-spline basis of the fit is used).
    Default coordinates: every pixel; pass the bin centres for the grid.
    """
    basis = model.basis
    h, w = basis.shape
    dtype = covariance.dtype
    y = jnp.arange(h, dtype=dtype) if y is None else jnp.asarray(y, dtype)
    x = jnp.arange(w, dtype=dtype) if x is None else jnp.asarray(x, dtype)
    ky, kx = basis.coefficient_shape
    by, bx = basis.matrix_y(y), basis.matrix_x(x)

    def one(cov):
        c4 = cov.reshape(ky, kx, ky, kx)
        m = jnp.einsum("yp,pqrs,yr->yqs", by, c4, by)
        return jnp.sqrt(jnp.maximum(jnp.einsum("xq,yqs,xs->yx", bx, m, bx), 0.0))

    fn = one
    for _ in range(covariance.ndim - 2):
        fn = jax.vmap(fn)
    return fn(covariance)
