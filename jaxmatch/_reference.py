r"""Reference-exposure selection: the LSST cost, a hard argmin and a soft-min.

LSST's ``MatchBackgroundsTask.selectRefExposure`` (spec: *selectRefExposure*)
picks the exposure that the others are matched to. For each exposure ``i`` it
measures, over the usable pixels of the image plane,

* ``var_i``  the sample variance of the pixel values,
* ``lev_i``  the mean pixel value (the background level),
* ``cov_i``  the number of usable pixels (the coverage),

normalises each quantity across the exposures and adds them with weights::

    cost_i = wVar · var_i / max_j var_j
           + wLevel · lev_i / max_j |lev_j|
           + wCov · min_j cov_j / cov_i

with ``wCov = bestRefWeightCoverage`` (LSST default 0.4),
``wVar = bestRefWeightVariance`` (0.4) and ``wLevel = bestRefWeightLevel``
(0.2). Low variance, low level and high coverage are preferred; the reference
is ``argmin_i cost_i`` (:func:`select_reference`).

jaxmatch also offers a differentiable relaxation, the soft-min
(:func:`softmin_weights`)::

    w_i = exp(-cost_i / T) / Σ_j exp(-cost_j / T),

which tends to the one-hot hard choice as the temperature ``T → 0``, and the
soft reference image ``Σ_i w_i image_i`` (:func:`soft_reference`). Both are
differentiable in the images, the three weights and ``T``.

Deviations from LSST (each is deliberate):

* **Level normalisation.** LSST divides by ``nanmax(level)``. When every level
  is positive this is the same as jaxmatch's ``max |level|``; when some or all
  levels are negative or zero LSST's term changes sign or divides by zero (with
  all levels negative it even prefers the *least* negative one). jaxmatch
  divides by ``max |level|`` so the term always lies in ``[-1, 1]`` and keeps its
  meaning: **the lowest level, i.e. the most negative, is preferred**.
* **Skipped entries do not normalise the others.** LSST skips an exposure it
  cannot read by giving it NaN statistics; ``nanmax``/``nanmin`` then ignore it.
  jaxmatch skips every entry whose variance, level or coverage is not finite, or
  whose coverage is 0, and computes the three normalisations over the
  remaining *candidates* only. This equals LSST when a skipped entry is all NaN
  (LSST's placeholder); it differs for a partly-valid entry (e.g. an exposure
  with one usable pixel, or none: LSST would let its coverage 0 set
  ``nanmin(coverage) = 0`` and erase the coverage term of every exposure).
* **Degenerate normalisations.** A term whose normaliser is 0 (all variances 0,
  all levels 0) contributes 0 instead of LSST's 0/0 = NaN.
* **Usable pixels** are those flagged ``usable`` *and* finite (spec: *Data*),
  so a NaN pixel never leaks into a statistic or its gradient.

**The Gen3 cost** (``refSelection="GEN3"``; LSST's Gen3 rewrite of the task,
``ChooseReferenceVisitTask._defineWarps``) replaces the level by the flatness of
the background. Each exposure's usable pixels are binned (``binSize``, afw's cell
layout); a bin with ``>= 2`` usable pixels is valid and has the clipped mean
``z_b`` and clipped variance ``v_b`` of its pixels (``MEANCLIP`` with
``numSigmaClip``, ``numIter``; LSST: ``MEANCLIP`` and ``VARIANCECLIP``). A plane
``p(u, v) = c0 + c1 u + c2 v`` is fitted to the valid bins with weights ``1/v_b``
(LSST: a Chebyshev ``Approximate`` of order 1, inverse-variance weighted), and::

    chi2_i = Σ_b (z_b - p_b)² / v_b / (n_b - 6)     (n_b valid bins; LSST's dof)
    var_i  = mean_b v_b
    cov_i  = number of usable pixels

    cost_i = wChi2 · chi2_i / max chi2 + wVar · var_i / max var + wCov · min cov / cov_i

with ``wChi2 = bestRefWeightChi2`` (0.3), ``wVar = bestRefWeightVariance`` (LSST
Gen3: 0.3) and ``wCov = bestRefWeightGlobalCoverage`` (0.4). Deviations: LSST
bins a whole tract over all of a visit's warps and interpolates empty bins before
the fit; jaxmatch bins one exposure and leaves empty bins out; its coverage counts
usable pixels (LSST: tract superpixels). An exposure with ``n_b <= 6`` valid bins
(LSST's dof ``<= 0``) or a bin variance of 0 has no finite χ² and is skipped.

All functions are pure and jittable. The statistics take one exposure; map
them over a batch with ``jax.vmap(reference_statistics)``.
"""

from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._binning import CellStats, cell_centres, cell_edges, grid_statistics
from ._exposure import Exposure

__all__ = [
    "reference_statistics",
    "reference_costs",
    "gen3_reference_statistics",
    "gen3_reference_costs",
    "select_reference",
    "softmin_weights",
    "soft_reference",
]


def reference_statistics(
    image: Float[ArrayLike, "H W"], usable: Bool[ArrayLike, "H W"]
) -> tuple[Float[Array, ""], Float[Array, ""], Float[Array, ""]]:
    r"""Variance, level and coverage of one exposure over its usable pixels.

    With ``U`` the usable pixels (``usable`` and finite) and ``n = |U|``::

        level    = (1/n) Σ_{p∈U} x_p
        variance = 1/(n-1) Σ_{p∈U} (x_p - level)²     (ddof = 1)
        coverage = n

    **Arguments:**

    - `image`: the image plane, shape ``(H, W)`` [ADU].
    - `usable`: shape ``(H, W)``; True where no bad mask plane
      (LSST ``badMaskPlanes``) is set. Non-finite pixels are dropped as well.

    **Returns:**

    ``(variance [ADU²], level [ADU], coverage [pixels])``, three scalars of
    ``image``'s floating dtype. ``variance`` is NaN with fewer than 2 usable
    pixels; ``level`` is NaN and ``coverage`` 0 with none. The gradient with
    respect to ``image`` is finite everywhere and 0 on unused pixels.

    !!! warning
        In float32 a naive ``E[x²] - E[x]²`` loses every digit for sky levels
        ~1e4 with scatter ~0.1. This function shifts by a pixel of the image
        and centres before squaring, which keeps ~1e-5 relative accuracy.
    """
    image = jnp.asarray(image)
    usable = jnp.asarray(usable, dtype=bool)
    if image.shape != usable.shape:
        raise ValueError(
            f"`image` has shape {image.shape} but `usable` has shape {usable.shape}; "
            "pass a mask of the same shape as the image."
        )
    dtype = jnp.result_type(image.dtype, float)  # ints -> default float; floats kept
    image = image.astype(dtype)

    # Spec *Data*: a usable pixel is unmasked and finite.
    usable = usable & jnp.isfinite(image)
    n = jnp.sum(usable, dtype=dtype)
    has_one = n >= 1
    has_two = n >= 2

    # Shift by one usable pixel so sums run over small numbers (x - shift);
    # softmax-style, the result does not depend on the shift, so no gradient.
    flat_image, flat_usable = image.ravel(), usable.ravel()
    shift = jnp.where(has_one, flat_image[jnp.argmax(flat_usable)], 0)
    shift = jax.lax.stop_gradient(shift)

    # The first `where` replaces unused (maybe NaN) pixels *before* any
    # arithmetic, so neither value nor gradient sees them (double-where trick).
    shifted = jnp.where(usable, image - shift, 0)
    safe_n = jnp.where(has_one, n, 1)
    mean_shifted = jnp.sum(shifted) / safe_n
    level = jnp.where(has_one, shift + mean_shifted, jnp.nan)

    # Second pass on centred values; the (Σd)²/n term is the Björck correction
    # that removes the rounding error left in the first-pass mean.
    centred = jnp.where(usable, shifted - mean_shifted, 0)
    sum_sq = jnp.sum(centred**2) - jnp.sum(centred) ** 2 / safe_n
    variance = jnp.where(has_two, sum_sq / jnp.where(has_two, n - 1, 1), jnp.nan)
    return variance, level, n


def _safe_ratio(num: Array, den: Array) -> Array:
    """``num / den`` where ``den != 0``, else 0, with a finite gradient."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), 0)


def reference_costs(
    variance: Float[ArrayLike, " N"],
    level: Float[ArrayLike, " N"],
    coverage: Float[ArrayLike, " N"],
    *,
    weight_coverage: Float[ArrayLike, ""],
    weight_variance: Float[ArrayLike, ""],
    weight_level: Float[ArrayLike, ""],
) -> Float[Array, " N"]:
    r"""LSST's reference cost of each exposure (lower is better).

    ::

        cost_i = wVar · var_i / max var + wLevel · lev_i / max |lev|
               + wCov · min cov / cov_i

    with the max/min over the candidate entries (finite statistics and
    ``coverage > 0``). See the module docstring for the two deviations from
    LSST (``max |level|`` instead of ``max level``; skipped entries do not
    normalise the others).

    **Arguments:**

    - `variance`, `level`, `coverage`: shape ``(N,)``, the outputs of
      :func:`reference_statistics` for ``N`` exposures [ADU², ADU, pixels].
      NaN marks a missing exposure.
    - `weight_coverage`: LSST ``bestRefWeightCoverage`` (default 0.4).
    - `weight_variance`: LSST ``bestRefWeightVariance`` (default 0.4).
    - `weight_level`: LSST ``bestRefWeightLevel`` (default 0.2).

    The weights may be Python floats or JAX scalars; the cost is
    differentiable with respect to them and to the statistics.

    **Returns:**

    The costs, shape ``(N,)``; NaN for skipped entries. A term whose
    normaliser is 0 (e.g. every variance 0) contributes 0.
    """
    return _weighted_cost(
        [
            (weight_variance, variance, "max"),
            (weight_level, level, "max_abs"),
            (weight_coverage, coverage, "inverse"),
        ],
        ("variance", "level", "coverage"),
    )


def _weighted_cost(terms, names) -> Float[Array, " N"]:
    """``Σ weight · normalised(values)`` over the candidate entries (NaN elsewhere).

    ``terms``: ``(weight, values (N,), kind)`` with kind ``"max"`` (``v / max v``),
    ``"max_abs"`` (``v / max |v|``) or ``"inverse"`` (``min v / v``, the coverage:
    a candidate needs ``v > 0``). A candidate has every value finite. Normalisers
    are taken over the candidates; a normaliser of 0 makes its term 0.
    """
    values = [jnp.asarray(v) for _, v, _ in terms]
    if not (values[0].ndim == 1 and all(v.shape == values[0].shape for v in values)):
        shapes = ", ".join(str(v.shape) for v in values)
        raise ValueError(
            f"`{'`, `'.join(names)}` must be 1-D arrays of the same length; got shapes {shapes}."
        )
    candidate = jnp.all(jnp.stack([jnp.isfinite(v) for v in values]), axis=0)
    for (_, _, kind), v in zip(terms, values):
        if kind == "inverse":
            candidate = candidate & (v > 0)
    any_candidate = jnp.any(candidate)
    cost = 0.0
    for (weight, _, kind), v in zip(terms, values):
        # Replace skipped entries before any arithmetic so NaNs reach neither the
        # normalisers nor the gradient (double-where trick).
        if kind == "inverse":
            # Spec *selectRefExposure*: nanmin(coverage) / coverage; the inf fill of
            # skipped entries never wins the min, and is replaced when none is left.
            safe = jnp.where(candidate, v, 1)
            v_min = jnp.min(jnp.where(candidate, v, jnp.inf))
            term = jnp.where(any_candidate, v_min, 1) / safe
        elif kind == "max":
            # Spec: v / nanmax(v); the values are >= 0, so the 0 fill never wins the max.
            safe = jnp.where(candidate, v, 0)
            term = _safe_ratio(safe, jnp.max(safe))
        else:
            # jaxmatch deviation: LSST divides by nanmax(level); max |level| keeps the
            # term in [-1, 1] and "lower is better" for negative levels too.
            safe = jnp.where(candidate, v, 0)
            term = _safe_ratio(safe, jnp.max(jnp.abs(safe)))
        cost = cost + weight * term
    return jnp.where(candidate, cost, jnp.nan)


def gen3_reference_statistics(
    image: Float[ArrayLike, "H W"],
    usable: Bool[ArrayLike, "H W"],
    bin_size: int,
    num_sigma_clip: float | Float[Array, ""] = 3.0,
    num_iter: int = 2,
) -> tuple[Float[Array, ""], Float[Array, ""], Float[Array, ""]]:
    r"""χ² of a plane fit, mean bin variance and coverage of one exposure (Gen3 cost).

    **Arguments:**

    - `image`, `usable`: shape ``(H, W)`` [ADU]; a pixel is used where ``usable``
      and finite.
    - `bin_size`: side of the bins [pixels] (static; afw's cell layout).
    - `num_sigma_clip`, `num_iter`: the clipping of each bin's mean and variance.

    **Returns:**

    ``(chi2 [dimensionless], variance [ADU²], coverage [pixels])``, see the module
    docstring. ``chi2`` is NaN with 6 valid bins or fewer, or when a valid bin has a
    variance of 0. Differentiable in ``image``: the plane fit is a weighted
    least-squares solve of 3 unknowns.
    """
    image = jnp.asarray(image)
    usable = jnp.asarray(usable, dtype=bool)
    if image.shape != usable.shape:
        raise ValueError(
            f"`image` has shape {image.shape} but `usable` has shape {usable.shape}; "
            "pass a mask of the same shape as the image."
        )
    dtype = jnp.result_type(image.dtype, float)
    image = image.astype(dtype)
    usable = usable & jnp.isfinite(image)
    h, w = image.shape
    edges_y, edges_x = cell_edges(h, bin_size), cell_edges(w, bin_size)
    value, s, _, n = cast(  # without `pooled` it returns one CellStats
        CellStats,
        grid_statistics(image, usable, edges_y, edges_x, "MEANCLIP", num_sigma_clip, num_iter),
    )
    var_bin = s * s
    valid = (n >= 2) & jnp.isfinite(value) & jnp.isfinite(var_bin)
    positive = valid & (var_bin > 0)
    n_valid = jnp.sum(valid)
    # Plane in the normalised coordinates of the cell centres.
    yc = 2 * (cell_centres(*edges_y) + 0.5) / h - 1
    xc = 2 * (cell_centres(*edges_x) + 0.5) / w - 1
    v, u = np.meshgrid(yc, xc, indexing="ij")
    design = jnp.asarray(np.stack([np.ones_like(u), u, v], axis=-1).reshape(-1, 3), dtype)
    weight = jnp.where(positive, 1 / jnp.where(positive, var_bin, 1), 0).reshape(-1)
    z = jnp.where(valid, value, 0).reshape(-1)
    normal = design.T @ (weight[:, None] * design)
    # A tiny ridge keeps the solve finite with fewer than 3 bins (then chi2 is NaN).
    scale = jnp.trace(normal) / 3
    normal = normal + 1e-12 * jnp.where(scale > 0, scale, 1) * jnp.eye(3, dtype=dtype)
    plane = design @ jnp.linalg.solve(normal, design.T @ (weight * z))
    chi2_sum = jnp.sum(weight * (z - plane) ** 2)
    dof = n_valid - 6  # LSST: "Assuming eq. of plane"
    ok = (dof > 0) & (jnp.sum(positive) == n_valid)
    chi2 = jnp.where(ok, chi2_sum / jnp.where(ok, dof, 1).astype(dtype), jnp.nan)
    variance = jnp.where(
        n_valid > 0,
        jnp.sum(jnp.where(valid, var_bin, 0)) / jnp.maximum(n_valid, 1).astype(dtype),
        jnp.nan,
    )
    coverage = jnp.sum(usable, dtype=dtype)
    return chi2, variance, coverage


def gen3_reference_costs(
    chi2: Float[ArrayLike, " N"],
    variance: Float[ArrayLike, " N"],
    coverage: Float[ArrayLike, " N"],
    *,
    weight_chi2: Float[ArrayLike, ""],
    weight_variance: Float[ArrayLike, ""],
    weight_coverage: Float[ArrayLike, ""],
) -> Float[Array, " N"]:
    r"""LSST Gen3's reference cost of each exposure (lower is better).

    ::

        cost_i = wChi2 · chi2_i / max chi2 + wVar · var_i / max var
               + wCov · min cov / cov_i

    over the candidates (finite statistics, ``coverage > 0``; NaN elsewhere),
    from :func:`gen3_reference_statistics`. Weights: LSST Gen3's
    ``bestRefWeightChi2`` (0.3), ``bestRefWeightVariance`` (0.3),
    ``bestRefWeightGlobalCoverage`` (0.4). Differentiable in the statistics and
    the weights.
    """
    return _weighted_cost(
        [
            (weight_chi2, chi2, "max"),
            (weight_variance, variance, "max"),
            (weight_coverage, coverage, "inverse"),
        ],
        ("chi2", "variance", "coverage"),
    )


def select_reference(costs: Float[ArrayLike, " N"]) -> Int[Array, ""]:
    """Index of the lowest finite cost (a jittable ``nanargmin``).

    **Arguments:**

    - `costs`: shape ``(N,)``, from :func:`reference_costs`; non-finite
      entries are skipped.

    **Returns:**

    A scalar integer index; ties go to the first. ``-1`` when no cost is
    finite (LSST raises RuntimeError there; jit cannot, so the caller does).
    """
    costs = jnp.asarray(costs)
    finite = jnp.isfinite(costs)
    index = jnp.argmin(jnp.where(finite, costs, jnp.inf))
    return jnp.where(jnp.any(finite), index, -1)


def softmin_weights(
    costs: Float[ArrayLike, " N"], temperature: Float[ArrayLike, ""]
) -> Float[Array, " N"]:
    r"""Soft-min weights ``softmax(-cost / T)`` over the finite costs.

    ::

        w_i = exp(-(cost_i - c*) / T) / Σ_j exp(-(cost_j - c*) / T),
        c* = min_j cost_j

    The shift by ``c*`` changes nothing mathematically and keeps every
    exponent ≤ 0, so nothing overflows even for tiny ``T``.

    **Arguments:**

    - `costs`: shape ``(N,)``; non-finite entries (skipped exposures) get
      weight exactly 0 and a zero gradient.
    - `temperature`: ``T > 0``, a scalar [cost units]; as ``T → 0`` the
      weights tend to one-hot on :func:`select_reference`. Not checked
      inside jit.

    **Returns:**

    Weights, shape ``(N,)``, summing to 1 (all 0 when no cost is finite).
    Differentiable in ``costs`` and ``temperature``.
    """
    costs = jnp.asarray(costs)
    finite = jnp.isfinite(costs)
    any_finite = jnp.any(finite)
    safe_costs = jnp.where(finite, costs, 0)  # double-where: no NaN in the gradient
    c_min = jnp.where(any_finite, jnp.min(jnp.where(finite, costs, jnp.inf)), 0)
    # Softmax is shift-invariant, so the shift needs no gradient (as jax.nn.softmax).
    c_min = jax.lax.stop_gradient(c_min)
    logits = jnp.where(finite, -(safe_costs - c_min) / temperature, -jnp.inf)
    unnormalised = jnp.exp(logits)
    total = jnp.sum(unnormalised)  # >= 1 when any cost is finite (the minimum gives e^0)
    return jnp.where(finite, unnormalised / jnp.where(any_finite, total, 1), 0)


def soft_reference(
    images: Float[ArrayLike, "N H W"], weights: Float[ArrayLike, " N"]
) -> Float[Array, "H W"]:
    r"""Soft reference image ``Σ_i w_i image_i``.

    **Arguments:**

    - `images`: shape ``(N, H, W)`` [ADU], the exposures' image planes.
    - `weights`: shape ``(N,)``, e.g. from :func:`softmin_weights`.

    **Returns:**

    The weighted image, shape ``(H, W)``. Non-finite pixels of exposures with
    weight exactly 0 count as 0 (a skipped exposure cannot poison the sum);
    a non-finite pixel of a weighted exposure stays non-finite.
    Differentiable in ``images`` and ``weights``.
    """
    images, weights = jnp.asarray(images), jnp.asarray(weights)
    if images.ndim != 3 or weights.shape != images.shape[:1]:
        raise ValueError(
            "`images` must have shape (N, H, W) and `weights` shape (N,); got "
            f"{images.shape} and {weights.shape}."
        )
    # Zero only the non-finite pixels of zero-weight exposures, so that the
    # gradient w.r.t. such a weight is still the image where it is finite.
    unweighted_bad = (weights == 0)[:, None, None] & ~jnp.isfinite(images)
    value = jnp.tensordot(weights, jnp.where(unweighted_bad, 0, images), axes=1)
    # The double-where: where the value is non-finite it carries no gradient, and the
    # finite pixels' sum is taken over finite images only. Otherwise a (masked)
    # non-finite pixel sends 0 · NaN = NaN into the gradient w.r.t. every weight.
    finite = jnp.isfinite(value)
    safe_value = jnp.tensordot(weights, jnp.where(jnp.isfinite(images), images, 0), axes=1)
    return jnp.where(finite, safe_value, jax.lax.stop_gradient(value))


def soft_reference_exposure(batch: Exposure, weights: Float[ArrayLike, " N"]) -> Exposure:
    r"""The soft reference exposure of a batch ``(N, H, W)`` for weights ``(N,)``.

    Image ``Σ_i w_i x_i`` and variance ``Σ_i w_i² var_i`` (`soft_reference`: the
    variance of a weighted sum of independent exposures); the mask is the OR of the
    masks of the exposures with ``w_i > 0``. An exposure left out of the reference
    (weight exactly 0: no usable pixel, a non-finite cost) masks nothing, or one
    empty exposure would empty the reference. Differentiable in the images and
    the weights.
    """
    weights = jnp.asarray(weights)
    in_reference = (weights > 0)[:, None, None]
    return Exposure(
        soft_reference(batch.image, weights),
        jnp.bitwise_or.reduce(jnp.where(in_reference, batch.mask, 0), axis=0),
        soft_reference(batch.variance, weights**2),
        mask_planes=batch.getMaskPlaneDict(),
    )
