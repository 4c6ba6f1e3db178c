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

All functions are pure and jittable. The statistics take one exposure; map
them over a batch with ``jax.vmap(reference_statistics)``.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

__all__ = [
    "reference_statistics",
    "reference_costs",
    "select_reference",
    "softmin_weights",
    "soft_reference",
]


def reference_statistics(
    image: Float[Array, "H W"], usable: Bool[Array, "H W"]
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
    variance, level, coverage = (jnp.asarray(a) for a in (variance, level, coverage))
    if not (variance.ndim == 1 and variance.shape == level.shape == coverage.shape):
        raise ValueError(
            "`variance`, `level` and `coverage` must be 1-D arrays of the same length; got "
            f"shapes {variance.shape}, {level.shape}, {coverage.shape}."
        )
    candidate = (
        jnp.isfinite(variance) & jnp.isfinite(level) & jnp.isfinite(coverage) & (coverage > 0)
    )
    any_candidate = jnp.any(candidate)

    # Replace skipped entries before any arithmetic so NaNs reach neither the
    # normalisers nor the gradient (double-where trick).
    var = jnp.where(candidate, variance, 0)
    lev = jnp.where(candidate, level, 0)
    cov = jnp.where(candidate, coverage, 1)

    # Spec *selectRefExposure*: var / nanmax(var). Variances are >= 0, so the
    # 0 fill never wins the max.
    var_term = _safe_ratio(var, jnp.max(var))
    # jaxmatch deviation: LSST divides by nanmax(level); max |level| keeps the
    # term in [-1, 1] and "lower is better" for negative levels too.
    lev_term = _safe_ratio(lev, jnp.max(jnp.abs(lev)))
    # Spec *selectRefExposure*: nanmin(coverage) / coverage; the inf fill of
    # skipped entries never wins the min, and is replaced when none is left.
    cov_min = jnp.min(jnp.where(candidate, coverage, jnp.inf))
    cov_term = jnp.where(any_candidate, cov_min, 1) / cov

    cost = weight_variance * var_term + weight_level * lev_term + weight_coverage * cov_term
    return jnp.where(candidate, cost, jnp.nan)


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
