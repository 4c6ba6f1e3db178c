"""Self-tuned matching in one call: choose the discrete and continuous settings by a
held-out loss that is comparable across them.

**The criterion.** The image is cut into a *fixed* grid of validation cells of
``cell_size`` pixels (independent of every candidate's ``binSize``), labelled in
``folds`` folds (a checkerboard for 2). For fold ``f`` the pixels of its cells are
set to NaN in every science exposure (GLOBAL mode: in every exposure), the candidate
is fitted on the rest with the ordinary `jaxmatch.match` (or
`jaxmatch.match_global`), and its model predicts the held-out cells:

    L = Σ_f Σ_{exposures} Σ_{cells c in fold f} ((v_c - m̂_{-f}(y_c, x_c)) / e_c)²
        / (number of those cells)

``v_c`` is the hard 3σ-clipped mean (2 iterations) of the difference image
``ref - sci`` (GLOBAL: ``x_i - x_j`` of every overlapping pair) over the cell's
usable pixels and ``e_c = s_c / √m_c`` its standard error; only cells with at
least a quarter of their pixels usable count. Both are the same for every
candidate, so ``L`` compares binSizes, orders, knot spacings, roughness and clip
parameters on one scale: ``L ≈ 1`` when the model predicts unseen cells to within
their noise, ``L - 1 ≈ (prediction error / e_c)²`` otherwise. The chosen settings
minimise ``L``; the truth is never used.

**The search.** For each discrete candidate (binSize and, for Chebyshev, order; for
the spline, knot spacing) one compiled call evaluates the whole grid of roughness
λ at once (an array argument of `match`). Candidates run in a fixed order (the
config's own first, then growing flexibility) with numSigmaClip = 3 until the time
budget is spent; the other clip values of the best one are then tried one at a time
(numSigmaClip is an argument too, so its compiled program is reused). The best
setting found is returned as a config (`AutotuneResult`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._binning import CellStats, cell_centres, cell_edges, grid_statistics
from ._compile import filter_jit
from ._config import MatchBackgroundsConfig
from ._exposure import Exposure, stack_exposures, usable_mask
from ._global import global_structure, match_global
from ._match import match
from ._reference import reference_costs, reference_statistics, select_reference

#: λ values tried for every discrete candidate (0: the λ floor only).
ROUGHNESS_GRID = (0.0, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)
#: numSigmaClip values tried with gridStatistic="MEANCLIP".
CLIP_GRID = (2.0, 2.5, 3.0, 4.0)
#: binSize ladder [pixels] (limited by the image and the validation cell size).
BIN_SIZES = (32, 48, 64, 96, 128, 192, 256)
#: binSizes tried for Chebyshev (the order sets the flexibility; bins only sample).
CHEBYSHEV_BIN_SIZES = (64, 128)
#: Chebyshev orders tried (limited by the bins along the short side).
ORDERS = (2, 3, 4, 5, 6, 7, 8, 10)
#: The fixed statistic of the validation cells: hard 3σ clip, 2 iterations.
CELL_STATISTIC = ("MEANCLIP", 3.0, 2)


class CandidateLoss(NamedTuple):
    """One evaluated setting and its held-out loss (`L` of the module docstring)."""

    binSize: int
    order: int  # Chebyshev order (-1 for the spline)
    splineKnotSpacing: int
    gridStatistic: str
    numSigmaClip: float
    splineRoughness: float
    loss: float


@dataclasses.dataclass(frozen=True)
class AutotuneResult:
    """What `autotune` returns.

    - ``config``: the chosen `MatchBackgroundsConfig` (save it with ``.save(path)``).
    - ``loss``: its held-out loss `L` (≈ 1 at the noise).
    - ``default_loss``: `L` of the starting config (None if it was not evaluated).
    - ``candidates``: every evaluated setting with its loss, best first.
    - ``seconds``: wall time of the search; ``budget_s``: the budget it had;
      ``complete``: False when the budget stopped the search early.
    - ``cell_size``, ``folds``: the validation layout.
    """

    config: MatchBackgroundsConfig
    loss: float
    default_loss: float | None
    candidates: tuple[CandidateLoss, ...]
    seconds: float
    budget_s: float
    complete: bool
    cell_size: int
    folds: int

    def summary(self, top: int = 5) -> str:
        """A few lines: the chosen settings, their loss, and the best alternatives."""
        c = self.config
        kind = f"Chebyshev order {c.order}" if c.usePolynomial else "spline"
        lines = [
            f"autotune: {kind}, binSize {c.binSize}, knot spacing {c.splineKnotSpacing}, "
            f"λ {c.splineRoughness:g}, {c.gridStatistic} numSigmaClip {c.numSigmaClip:g}: "
            f"held-out loss {self.loss:.4f}"
            + ("" if self.default_loss is None else f" (start: {self.default_loss:.4f})"),
            f"  {len(self.candidates)} settings in {self.seconds:.1f} s (budget "
            f"{self.budget_s:g} s{'' if self.complete else ', stopped early'}); "
            f"validation cells {self.cell_size} px, {self.folds} folds",
        ]
        for cand in self.candidates[:top]:
            lines.append(f"  {cand.loss:10.4f}  {_describe(cand)}")
        return "\n".join(lines)


def _describe(c: CandidateLoss) -> str:
    order = "spline" if c.order < 0 else f"order {c.order}"
    return (
        f"binSize {c.binSize}, {order}, knots/{c.splineKnotSpacing}, {c.gridStatistic} "
        f"{c.numSigmaClip:g}, λ {c.splineRoughness:g}"
    )


# ----------------------------------------------------------------------------- layout


def default_cell_size(shape: tuple[int, ...]) -> int:
    """Validation cell side [pixels]: 1/32 of the short side, between 8 and 32."""
    return int(min(max(min(shape) // 32, 8), 32))


def _layout(shape, cell_size, folds, seed):
    """Cell edges, fold labels ``(ny, nx)`` and each pixel's cell row/column."""
    from ._tuning import fold_labels

    (h, w), ey, ex = shape, cell_edges(shape[0], cell_size), cell_edges(shape[1], cell_size)
    labels = fold_labels((len(ey[0]), len(ex[0])), "checkerboard" if folds == 2 else folds, seed)
    row = np.repeat(np.arange(len(ey[0])), ey[1])
    col = np.repeat(np.arange(len(ex[0])), ex[1])
    assert row.size == h and col.size == w
    return ey, ex, labels, row, col


def _cell_values(diff, ey, ex, min_pixels):
    """Validation value, error and usability of every cell of a coded difference."""
    value, s, m, n = cast(CellStats, grid_statistics(diff, None, ey, ex, *CELL_STATISTIC))
    ok = (n >= min_pixels) & (s > 0)
    err = jnp.where(ok, s, 1.0) / jnp.sqrt(jnp.where(ok, m, 1).astype(diff.dtype))
    return jnp.where(ok, value, 0.0), err, ok


def _held_pixels(shape, cell_size, folds, seed):
    """``(folds, H, W)`` bool: the pixels each fold hides (an argument of the compiled
    tables, not a constant: XLA would spend seconds folding a 1024² constant)."""
    _, _, labels, row, col = _layout(shape, cell_size, folds, seed)
    pixel_labels = labels[row][:, col]
    return jnp.asarray(pixel_labels[None] == np.arange(int(labels.max()) + 1)[:, None, None])


def _score(val, err, ok, held, pred):
    """Σ χ² over the held, usable cells and their count (NaN predictions drop out)."""
    use = ok & held & jnp.isfinite(pred)
    chi = jnp.where(use, (val - jnp.where(use, pred, 0.0)) / err, 0.0)
    return jnp.sum(chi * chi), jnp.sum(use)


# ----------------------------------------------------------------------------- losses


@filter_jit
def _reference_table(ref, sci, config, lams, nsigs, layout):
    """Σχ² and counts ``(S, R)`` of one discrete candidate, REFERENCE mode."""
    cell_size, folds, seed, bits_ref, bits_sci, held_all = layout
    shape = ref.image.shape
    ey, ex, labels, row, col = _layout(shape, cell_size, folds, seed)
    cy = jnp.asarray(cell_centres(*ey), sci.image.dtype)
    cx = jnp.asarray(cell_centres(*ex), sci.image.dtype)
    min_pixels = max(4, cell_size * cell_size // 4)

    def cells_of(s_image, s_mask):
        diff = ref.image - s_image
        usable = usable_mask(diff, (ref.mask, bits_ref), (s_mask, bits_sci))
        return _cell_values(jnp.where(usable, diff, jnp.nan), ey, ex, min_pixels)

    val, err, ok = jax.lax.map(lambda a: cells_of(*a), (sci.image, sci.mask))

    def fold_table(held, held_cells):
        sci_f = dataclasses.replace(sci, image=jnp.where(held[None], jnp.nan, sci.image))

        def one(nsig, lam):
            out = match(
                ref, sci_f, config, roughness=lam, num_sigma_clip=nsig, raise_on_failure=False
            )
            basis = out.model.basis
            pred = jax.vmap(lambda c: basis.evaluate(c, cy, cx))(out.model.coefficients)
            chi2, n = jax.vmap(_score, in_axes=(0, 0, 0, None, 0))(val, err, ok, held_cells, pred)
            return jnp.sum(chi2), jnp.sum(n).astype(chi2.dtype)

        return jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None))(nsigs, lams)

    return _over_folds(fold_table, held_all, labels)


def _over_folds(fold_table, held_all, labels):
    """Σ over the folds of ``fold_table(held pixels, held cells)``: one compiled body
    run once per fold (`jax.lax.map`), not a copy of the fits per fold."""
    held_cells = jnp.asarray(labels[None] == np.arange(held_all.shape[0])[:, None, None])
    total, count = jax.lax.map(lambda a: fold_table(*a), (held_all, held_cells))
    return jnp.sum(total, axis=0), jnp.sum(count, axis=0)


@filter_jit
def _global_table(batch, config, structure, lams, nsigs, layout):
    """Σχ² and counts ``(S, R)`` of one discrete candidate, GLOBAL mode: every
    overlapping pair's held-out cells, predicted by the joint solve."""
    cell_size, folds, seed, bits, _, held_all = layout
    pairs = np.asarray(structure[0], dtype=np.int64).reshape(-1, 2)
    groups, gauge = np.asarray(structure[1]), np.asarray(structure[2])
    shape = batch.image.shape[1:]
    ey, ex, labels, row, col = _layout(shape, cell_size, folds, seed)
    cy = jnp.asarray(cell_centres(*ey), batch.image.dtype)
    cx = jnp.asarray(cell_centres(*ex), batch.image.dtype)
    min_pixels = max(4, cell_size * cell_size // 4)

    def cells_of(ij):
        xi, xj = batch[ij[0]], batch[ij[1]]
        diff = xi.image - xj.image
        usable = usable_mask(diff, (xi.mask, bits), (xj.mask, bits))
        return _cell_values(jnp.where(usable, diff, jnp.nan), ey, ex, min_pixels)

    val, err, ok = jax.lax.map(cells_of, jnp.asarray(pairs))

    def fold_table(held, held_cells):
        batch_f = dataclasses.replace(batch, image=jnp.where(held[None], jnp.nan, batch.image))

        def one(nsig, lam):
            out = match_global(
                batch_f,
                pairs,
                groups,
                gauge,
                config,
                roughness=lam,
                num_sigma_clip=nsig,
                covariance=False,
            )
            basis = out.model.basis
            coef = out.model.coefficients
            # x_i - x_j is predicted by model_j - model_i (matched = x + model).
            dcoef = coef[pairs[:, 1]] - coef[pairs[:, 0]]
            pred = jax.vmap(lambda c: basis.evaluate(c, cy, cx))(dcoef)
            chi2, n = jax.vmap(_score, in_axes=(0, 0, 0, None, 0))(val, err, ok, held_cells, pred)
            return jnp.sum(chi2), jnp.sum(n).astype(chi2.dtype)

        return jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None))(nsigs, lams)

    return _over_folds(fold_table, held_all, labels)


def heldout_cell_loss(
    exposures,
    config: MatchBackgroundsConfig,
    *,
    reference: int | None = None,
    roughness: Sequence[float] | None = None,
    num_sigma_clip: Sequence[float] | None = None,
    cell_size: int | None = None,
    folds: int = 2,
    seed: int = 0,
) -> Float[Array, "S R"]:
    """The held-out cell loss `L` (module docstring) of ``config`` for every
    ``numSigmaClip`` (rows) × roughness λ (columns); one value when both are None.

    ``exposures``: a batch ``(N, H, W)`` or a list. ``reference``: the reference index
    (None: LSST's choice, `select_reference`; GLOBAL mode: the gauge exposure).
    +inf where no held-out cell could be predicted (every fit failed).
    """
    batch = _as_batch(exposures)
    lams = [config.splineRoughness] if roughness is None else list(roughness)
    nsigs = [config.numSigmaClip] if num_sigma_clip is None else list(num_sigma_clip)
    cell_size = default_cell_size(batch.image.shape[1:]) if cell_size is None else int(cell_size)
    _check_layout(cell_size, folds, batch.image.shape[1:])
    ref_index = choose_reference(batch, config) if reference is None else int(reference)
    table = _table(batch, config, ref_index, lams, nsigs, cell_size, folds, seed, None)
    return table[0, 0] if roughness is None and num_sigma_clip is None else table


def _table(batch, config, ref_index, lams, nsigs, cell_size, folds, seed, structure):
    dtype = batch.image.dtype
    lams_a, nsigs_a = jnp.asarray(lams, dtype), jnp.asarray(nsigs, dtype)
    if config.usePolynomial and config.undersampleStyle == "INCREASE_NXNYSAMPLE":
        config = config.replace(undersampleStyle="REDUCE_INTERP_ORDER")  # traceable
    if config.matchMode == "GLOBAL":
        if structure is None:
            structure = global_structure(batch, config, ref_index)
        bits = batch.bitmask(config.badMaskPlanes)
        held_all = _held_pixels(batch.image.shape[1:], cell_size, folds, seed)
        layout = (cell_size, folds, seed, bits, None, held_all)
        pairs, groups, gauge = (np.asarray(a) for a in structure)
        static = (
            tuple(map(tuple, pairs.reshape(-1, 2).tolist())),
            tuple(int(g) for g in groups),
            tuple(bool(g) for g in gauge),
        )
        total, count = _global_table(batch, config, static, lams_a, nsigs_a, layout)
    else:
        n = batch.image.shape[0]
        others = np.array([i for i in range(n) if i != ref_index])
        ref, sci = batch[ref_index], jax.tree.map(lambda a: a[others], batch)
        held_all = _held_pixels(ref.image.shape, cell_size, folds, seed)
        bits_ref, bits_sci = ref.bitmask(config.badMaskPlanes), sci.bitmask(config.badMaskPlanes)
        layout = (cell_size, folds, seed, bits_ref, bits_sci, held_all)
        total, count = _reference_table(ref, sci, config, lams_a, nsigs_a, layout)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.inf)


def choose_reference(batch: Exposure, config: MatchBackgroundsConfig) -> int:
    """LSST's reference choice (the minimum of the reference cost)."""
    bits = batch.bitmask(config.badMaskPlanes)
    usable = usable_mask(batch.image, (batch.mask, bits))
    var, level, cov = jax.vmap(reference_statistics)(batch.image, usable)
    costs = reference_costs(
        var,
        level,
        cov,
        weight_coverage=config.bestRefWeightCoverage,
        weight_variance=config.bestRefWeightVariance,
        weight_level=config.bestRefWeightLevel,
    )
    index = int(select_reference(costs))
    if index < 0:
        raise ValueError("no exposure has a usable pixel: nothing to tune on")
    return index


def _as_batch(exposures) -> Exposure:
    if isinstance(exposures, Exposure):
        if len(exposures.batch_shape) != 1:
            raise ValueError(f"exposures must be a batch (N, H, W), got {exposures.image.shape}")
        batch = exposures
    else:
        batch = stack_exposures(list(exposures))
    if batch.image.shape[0] < 2:
        raise ValueError("tuning needs at least 2 exposures (a reference and one other)")
    return batch


def _check_layout(cell_size, folds, shape):
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    if cell_size < 2 or cell_size * 2 > min(shape):
        raise ValueError(
            f"cell_size must be >= 2 and at most half the short side {min(shape)}, got {cell_size}"
        )


# ----------------------------------------------------------------------------- search


def candidate_settings(
    config: MatchBackgroundsConfig,
    shape: tuple[int, ...],
    *,
    cell_size: int,
    bin_sizes: Sequence[int] | None = None,
    orders: Sequence[int] | None = None,
    knot_spacings: Sequence[int] = (1,),
) -> list[MatchBackgroundsConfig]:
    """The discrete candidates, in search order: ``config`` itself first, then the
    others from coarse to fine (cheap and rigid first). Settings the grid cannot
    support (too few bins for the order or spline style) are left out."""
    from ._match import plan_fit

    short = min(shape)
    if bin_sizes is None:
        ladder = CHEBYSHEV_BIN_SIZES if config.usePolynomial else BIN_SIZES
        bin_sizes = [b for b in ladder if cell_size <= b <= short // 3] or [config.binSize]
    # Search order: bins nearest 64 pixels first, orders nearest the config's first
    # (a budget then cuts the least likely settings).
    bins = sorted(set(int(b) for b in bin_sizes), key=lambda b: (abs(math.log2(b / 64)), b))
    order_list = sorted(
        set(int(o) for o in (orders if orders is not None else ORDERS)),
        key=lambda o: (abs(o - config.order), -o),
    )
    out = [config]
    for b in bins:
        if config.usePolynomial:
            npoints = math.ceil(short / b)
            for o in order_list:
                if o <= npoints - 1:
                    out.append(config.replace(binSize=b, order=int(o), orderY=None))
        else:
            for k in knot_spacings:
                out.append(config.replace(binSize=b, splineKnotSpacing=int(k)))
    seen, unique = set(), []
    for c in out:
        key = (c.binSize, c.order, c.splineKnotSpacing)
        if key in seen:
            continue
        try:
            plan_fit(c, shape, c.binSize)
        except ValueError:
            continue
        seen.add(key)
        unique.append(c)
    return unique


def autotune(
    exposures,
    config=None,
    *,
    budget_s: float = 60.0,
    reference: int | None = None,
    bin_sizes: Sequence[int] | None = None,
    orders: Sequence[int] | None = None,
    knot_spacings: Sequence[int] = (1,),
    roughness: Sequence[float] = ROUGHNESS_GRID,
    num_sigma_clip: Sequence[float] = CLIP_GRID,
    cell_size: int | None = None,
    folds: int = 2,
    seed: int = 0,
) -> AutotuneResult:
    """Choose binSize, order (or knot spacing), λ and the clip threshold in one call.

    Arguments:
        exposures: a batch ``(N, H, W)`` or a list of exposures of one patch (the
            same ones that will be matched; N ≥ 2).
        config: the starting `MatchBackgroundsConfig` (or a task holding one):
            it fixes the model family (``usePolynomial``), ``interpStyle``,
            ``matchMode`` and everything not searched. Default: LSST's.
        budget_s: wall-clock budget [s]. Candidates run in order until the next one
            would exceed it (the first one always runs); compilation counts.
        reference: the reference (REFERENCE mode) or gauge (GLOBAL) index; None:
            LSST's choice (`choose_reference`).
        bin_sizes, orders, knot_spacings: the discrete grid (default: `BIN_SIZES`
            that fit the image, `ORDERS`, spacing 1).
        roughness, num_sigma_clip: the λ and numSigmaClip values tried for every
            discrete candidate (one compiled call per candidate). With
            ``gridStatistic="MEAN"`` or ``"MEDIAN"`` in the config the clip values
            are tried with ``MEANCLIP``, and the config's own statistic as well.
        cell_size, folds, seed: the validation layout (`default_cell_size`).

    Returns an `AutotuneResult`: ``result.config`` is the chosen config (match with
    it; save it with ``result.config.save("chosen.toml")``), with the loss of every
    candidate and the time spent. The truth is never used: only held-out cells.
    """
    from ._tuning import as_config

    start = time.perf_counter()
    config = as_config(config)
    if not (isinstance(budget_s, (int, float)) and budget_s > 0 and math.isfinite(budget_s)):
        raise ValueError(f"budget_s must be a positive number of seconds, got {budget_s!r}")
    batch = _as_batch(exposures)
    shape = batch.image.shape[1:]
    cell_size = default_cell_size(shape) if cell_size is None else int(cell_size)
    _check_layout(cell_size, folds, shape)
    lams = [float(v) for v in roughness]
    if not lams or any(not (math.isfinite(v) and v >= 0) for v in lams):
        raise ValueError(f"roughness values must be finite and >= 0, got {roughness!r}")
    clips = [float(v) for v in num_sigma_clip]
    if not clips or any(not (math.isfinite(v) and v > 0) for v in clips):
        raise ValueError(f"num_sigma_clip values must be finite and > 0, got {num_sigma_clip!r}")
    ref_index = choose_reference(batch, config) if reference is None else int(reference)
    if not 0 <= ref_index < batch.image.shape[0]:
        raise ValueError(f"reference index {ref_index} is not in 0..{batch.image.shape[0] - 1}")
    structure = None
    if config.matchMode == "GLOBAL":
        structure = global_structure(batch, config, ref_index)

    discrete = candidate_settings(
        config,
        shape,
        cell_size=cell_size,
        bin_sizes=bin_sizes,
        orders=orders,
        knot_spacings=knot_spacings,
    )
    if not discrete:
        raise ValueError("no candidate setting fits this image; give bin_sizes/orders")

    candidates: list[tuple[CandidateLoss, MatchBackgroundsConfig]] = []
    state: dict[str, Any] = dict(default_loss=None, complete=True, last=0.0, done=set(), best={})

    def evaluate(cand, stat, nsigs) -> float:
        """Evaluate one discrete candidate over the λ × clip grid; its best loss
        (+inf when skipped for the budget, or already done)."""
        nsigs = [v for v in nsigs if (cand, stat, v) not in state["done"]]
        if not nsigs:
            return state["best"].get((cand, stat), math.inf)
        if candidates and time.perf_counter() - start + state["last"] > budget_s:
            state["complete"] = False
            return math.inf
        t0 = time.perf_counter()
        cfg = cand.replace(gridStatistic=stat)
        lam_list = lams if cand is not config else sorted(set(lams) | {config.splineRoughness})
        table = np.asarray(
            _table(batch, cfg, ref_index, lam_list, nsigs, cell_size, folds, seed, structure)
        )
        state["last"] = time.perf_counter() - t0
        for a, nsig in enumerate(nsigs):
            state["done"].add((cand, stat, nsig))
            for b, lam in enumerate(lam_list):
                chosen = cfg.replace(numSigmaClip=float(nsig), splineRoughness=float(lam))
                row = CandidateLoss(
                    binSize=cfg.binSize,
                    order=cfg.order if cfg.usePolynomial else -1,
                    splineKnotSpacing=cfg.splineKnotSpacing,
                    gridStatistic=stat,
                    numSigmaClip=float(nsig),
                    splineRoughness=float(lam),
                    loss=float(table[a, b]),
                )
                candidates.append((row, chosen))
                if chosen == config:
                    state["default_loss"] = row.loss
        best = min(float(np.min(table)), state["best"].get((cand, stat), math.inf))
        state["best"][(cand, stat)] = best
        return best

    # Stage 0: the starting config as given (the baseline). Stage 1: every discrete
    # candidate × λ with MEANCLIP at one clip value. Stage 2: the best discrete
    # candidate with the other clip values.
    evaluate(config, config.gridStatistic, [config.numSigmaClip])
    first_clip = 3.0 if 3.0 in clips else clips[len(clips) // 2]
    stage1 = [(evaluate(c, "MEANCLIP", [first_clip]), k) for k, c in enumerate(discrete)]
    best_loss, best_k = min(stage1)
    if math.isfinite(best_loss):
        # one clip value per call: the program compiled for stage 1 is reused
        for nsig in clips:
            evaluate(discrete[best_k], "MEANCLIP", [nsig])
    default_loss, complete = state["default_loss"], state["complete"]
    candidates.sort(key=lambda rc: (not math.isfinite(rc[0].loss), rc[0].loss))
    best_row, best_config = candidates[0]
    if not math.isfinite(best_row.loss):
        raise ValueError("no candidate could predict any held-out cell (every fit failed)")
    return AutotuneResult(
        config=best_config,
        loss=best_row.loss,
        default_loss=default_loss,
        candidates=tuple(r for r, _ in candidates),
        seconds=time.perf_counter() - start,
        budget_s=float(budget_s),
        complete=complete,
        cell_size=cell_size,
        folds=folds,
    )


# ----------------------------------------------------------------------------- sources


def mask_difference_sources(
    exposures,
    reference: int,
    config: MatchBackgroundsConfig | None = None,
    *,
    detection=None,
    plane: str = "DETECTED",
) -> Exposure:
    """Mark the sources of each difference image ``ref − sci`` in the science masks.

    Light that is in one exposure and not the other (a variable or moving source,
    a flux-scale residual of a galaxy, a satellite trail nobody flagged) is not
    background, yet a bin statistic follows it. For every science exposure the
    difference with the reference (pixels usable in both under
    ``config.badMaskPlanes``) is searched for sources of either sign with the
    detection of plain images (``jaxmatch._sources.source_mask``: a local block
    background, the pixel noise, a 3 × 3-smoothed threshold and a dilation;
    ``detection`` = a ``jaxmatch._sources.Detection``, default thresholds), and
    their pixels are flagged in
    ``plane`` of that science exposure. The reference is left as it is.

    Call it once, then tune and match on the result (``plane`` must be one of
    ``config.badMaskPlanes``, as ``DETECTED`` is by LSST's default): the validation
    cells of `autotune` and every fit then ignore the same pixels. REFERENCE mode
    only (the difference images are those with the reference).

    Returns a new batch ``(N, H, W)``: images and variances unchanged, masks with
    ``plane`` added; `ValueError` naming the plane when the exposures have no such
    plane or the config would not ignore it.
    """
    from ._sources import Detection, source_mask
    from ._tuning import as_config

    config = as_config(config)
    batch = _as_batch(exposures)
    planes = batch.getMaskPlaneDict()
    if plane not in planes:
        raise ValueError(f"no {plane} mask plane to mark sources in (planes: {sorted(planes)})")
    if plane not in config.badMaskPlanes:
        raise ValueError(
            f"mask plane {plane} is not in badMaskPlanes {list(config.badMaskPlanes)}: "
            "the marked sources would not be ignored"
        )
    n = batch.image.shape[0]
    if not 0 <= reference < n:
        raise ValueError(f"reference index {reference} is not in 0..{n - 1}")
    detection = Detection() if detection is None else detection
    bits = batch.bitmask(config.badMaskPlanes)
    images = np.asarray(batch.image, dtype=np.float64)
    masks = np.array(batch.mask)
    ref_ok = ((masks[reference] & bits) == 0) & np.isfinite(images[reference])
    for i in range(n):
        if i == reference:
            continue
        diff = images[reference] - images[i]
        usable = ref_ok & ((masks[i] & bits) == 0) & np.isfinite(diff)
        found = source_mask(diff, usable, detection) | source_mask(-diff, usable, detection)
        masks[i] = np.where(found & usable, masks[i] | (1 << planes[plane]), masks[i])
    return dataclasses.replace(batch, mask=jnp.asarray(masks, dtype=batch.mask.dtype))


#: File the command line writes the chosen config to, in the output folder.
CHOSEN_CONFIG_NAME = "chosen.toml"


def tune_for_command_line(exposures, config, budget_s, reference, out) -> MatchBackgroundsConfig:
    """``jaxmatch match --tune``: run `autotune`, print its summary on stderr, write
    the chosen config to ``out/chosen.toml`` (reusable with ``--config``), return it."""
    import sys
    from pathlib import Path

    from ._atomic import atomic_write

    result = autotune(exposures, config, budget_s=budget_s, reference=reference)
    print(result.summary(), file=sys.stderr)
    path = Path(out) / CHOSEN_CONFIG_NAME
    header = (
        f"# chosen by jaxmatch match --tune: held-out loss {result.loss:.6g}"
        + ("" if result.default_loss is None else f" (start {result.default_loss:.6g})")
        + f", {len(result.candidates)} settings in {result.seconds:.1f} s\n"
    )
    text = header + result.config.toToml()
    atomic_write(path, lambda f: f.write(text.encode()))
    print(f"jaxmatch: chosen config written to {path}", file=sys.stderr)
    return result.config
