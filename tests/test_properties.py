"""Property-based tests (hypothesis) of the engine `jaxmatch.match`.

Properties, each over random data, masks and NaN patterns:

1. adding a constant ``c`` to the science images changes the model by ``-c``
   (both families; see the tolerance below);
2. matching an exposure to itself gives a model that is exactly zero;
3. the result does not depend on the order of the exposures in the batch;
4. float32 and float64 agree on well-conditioned cases;
5. jaxmatch agrees with the NumPy oracle (``tests/oracle.py``) on random masks,
   including failures (no usable bin, undersampled) and reduced orders;

and, checked in every example of every property, the status contract: a
successful fit has finite coefficients and model, a failed one has NaN
coefficients and diagnostics and leaves the science image unchanged.

Cost: every (config, shape, batch size) compiles the engine once (~3 s), so the
shapes and configs are a few fixed ones per property (``CONFIGS``) and hypothesis
varies the *data*: a seed for NumPy's generator plus a handful of mask knobs
(fractions of bad / NaN pixels, masked rectangles, masked bins). The model image
is evaluated by one jitted function. About 2,700 examples in total; the file runs
in well under 3 minutes on 2 cores.

Runs are derandomized (the same examples every run, so CI cannot flake); set
``JAXMATCH_HYPOTHESIS_RANDOM=1`` to explore new examples locally.
"""

import dataclasses
import os

import jax
import numpy as np
import oracle
import pytest
from helpers import assert_status_contract, oracle_of, smooth_field
from hypothesis import HealthCheck, event, given, settings, strategies as st

import jaxmatch as jm
from jaxmatch import DEFAULT_MASK_PLANES

BAD = 1 << DEFAULT_MASK_PLANES["BAD"]
NO_DATA = 1 << DEFAULT_MASK_PLANES["NO_DATA"]
SUSPECT = 1 << DEFAULT_MASK_PLANES["SUSPECT"]  # not a bad plane: must change nothing
RIDGE_PER_CELL = 1e-10  # docs/algorithm.md §6: ε = 1e-10 · (valid cells)

_RANDOM = bool(os.environ.get("JAXMATCH_HYPOTHESIS_RANDOM"))


def _settings(max_examples):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=not _RANDOM,
        database=None if not _RANDOM else settings.default.database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


# ------------------------------------------------------------------------ data
@dataclasses.dataclass(frozen=True)
class Masks:
    """The mask knobs hypothesis draws; the positions come from the data seed."""

    bad_frac: float = 0.0  # science pixels flagged BAD (values set to -1e4)
    n_rects: int = 0  # science rectangles flagged NO_DATA (values NaN), up to half a side
    nan_frac: float = 0.0  # unflagged NaN / +inf / -inf science pixels
    ref_frac: float = 0.0  # reference pixels flagged BAD (values set to 1e5)
    bin_frac: float = 0.0  # whole 16 x 16 blocks flagged NO_DATA (missing bins)


def masks(*, missing_bins=True):
    """Mask knobs; without ``missing_bins`` every bin keeps most of its pixels."""
    return st.builds(
        Masks,
        bad_frac=st.floats(0.0, 0.6 if missing_bins else 0.4),
        n_rects=st.integers(0, 3) if missing_bins else st.just(0),
        nan_frac=st.sampled_from([0.0, 0.01, 0.1]),
        ref_frac=st.floats(0.0, 0.3),
        bin_frac=st.sampled_from([0.0, 0.3, 0.6, 0.9]) if missing_bins else st.just(0.0),
    )


def draw_batch(seed, shape, n_sci, m: Masks, *, sky=100.0, sigma=1.0, amplitude=3.0):
    """A reference and ``n_sci`` science exposures: smooth difference + noise + masks."""
    rng = np.random.default_rng(seed)
    h, w = shape
    ref_img = sky + rng.normal(0, sigma, shape)
    ref_mask = np.zeros(shape, np.int32)
    if m.ref_frac:
        sel = rng.random(shape) < m.ref_frac
        ref_mask[sel] |= BAD
        ref_img[sel] = 1e5
    images, mask_list = [], []
    for _ in range(n_sci):
        img = sky - smooth_field(shape, rng, amplitude) + rng.normal(0, sigma, shape)
        mask = np.where(rng.random(shape) < 0.05, SUSPECT, 0).astype(np.int32)
        if m.bad_frac:
            sel = rng.random(shape) < m.bad_frac
            mask[sel] |= BAD
            img[sel] = -1e4
        for _ in range(m.n_rects):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            y1, x1 = y0 + rng.integers(1, h // 2 + 1), x0 + rng.integers(1, w // 2 + 1)
            mask[y0:y1, x0:x1] |= NO_DATA
            img[y0:y1, x0:x1] = np.nan
        if m.bin_frac:
            blocks = rng.random((-(-h // 16), -(-w // 16))) < m.bin_frac
            sel = np.kron(blocks, np.ones((16, 16), bool))[:h, :w]
            mask[sel] |= NO_DATA
            img[sel] = np.nan
        if m.nan_frac:
            sel = rng.random(shape) < m.nan_frac
            img[sel] = rng.choice([np.nan, np.inf, -np.inf], size=int(sel.sum()))
        images.append(img)
        mask_list.append(mask)
    var = np.full(shape, sigma**2)
    ref = jm.Exposure(ref_img, ref_mask, var)
    sci = jm.Exposure(np.stack(images), np.stack(mask_list), np.stack([var] * n_sci))
    return ref, sci


def _cfg(**fields):
    return jm.MatchBackgroundsConfig(**fields)


SEEDS = st.integers(0, 2**32 - 1)


# ------------------------------------------------- 1. constant offset ↦ model - c
# Tolerance. Adding c to every science pixel subtracts c from every bin value and
# leaves the bin errors (hence the weights) unchanged; the bases reproduce a
# constant exactly (T_0 = 1; the cardinal spline bases are partitions of unity;
# Akima of shifted knots is shifted) and the roughness penalty ignores constants.
# Only the rank guard ε ||coef||² (ε = 1e-10 · n_valid) pulls the constant towards
# zero: with A = √w̃ B the weighted design over the valid bins and active terms, the
# coefficient error is ε (AᵀA + ε)⁻¹ coef_c, so
#     |Δmodel + c| ≤ 10 · |c| · ε / σ_min(A)²  (+ float64 rounding, 1e-13 |c|),
# the factor 10 covering the basis' row norms (≤ √K ≈ 3.5 for K ≤ 12 terms) and
# the coupling by the penalty. When every bin is valid σ_min(A)² ≈ min w̃ and the
# bound is ~1e-8 |c|. When the valid bins do not determine every active term
# (σ_min → 0) nothing holds: then the ridge chooses the constant's representation
# and the model is *not* shifted by c (tests/test_reliability.py:
# test_rank_deficient_valid_bins_keep_a_constant, an expected failure). The spline's
# missing bins are filled by the penalty against the same ridge and do not keep the
# offset either (test_spline_fill_of_missing_bins_keeps_a_constant): spline fits are
# drawn with every bin valid.
SHIFT_CONFIGS = {
    "natural-mean": ((64, 64), _cfg(binSize=16, interpStyle="NATURAL_SPLINE")),
    "akima-meanclip": ((80, 96), _cfg(binSize=16, gridStatistic="MEANCLIP")),
    "cheb3-median": (
        (64, 64),
        _cfg(binSize=16, usePolynomial=True, order=3, gridStatistic="MEDIAN"),
    ),
    "cheb-tensor": (
        (64, 96),
        _cfg(binSize=16, usePolynomial=True, order=3, orderY=2, chebyshevTerms="TENSOR"),
    ),
}


def _sigma_min_squared(result, k, config, shape):
    """σ_min(√w̃ B)² over the valid bins and the active terms of exposure k."""
    valid = np.isfinite(np.asarray(result.grid_values[k]))
    w = np.asarray(result.grid_weights[k])[valid]
    if not config.usePolynomial:  # one knot per bin, all valid: B is the identity
        assert valid.all() and config.splineKnotSpacing == 1
        return float(w.min())
    (h, width), b = shape, config.binSize
    cy = oracle.cell_centres(*oracle.cell_edges(h, b))
    cx = oracle.cell_centres(*oracle.cell_edges(width, b))
    eff_y, eff_x = (int(v) for v in np.asarray(result.effective_order[k]))
    by = oracle.chebyshev_matrix(2 * (cy + 0.5) / h - 1, eff_y)
    bx = oracle.chebyshev_matrix(2 * (cx + 0.5) / width - 1, eff_x)
    p, q = np.meshgrid(np.arange(eff_y + 1), np.arange(eff_x + 1), indexing="ij")
    active = (p + q <= max(eff_y, eff_x)) if config.chebyshevTerms == "TOTAL" else p >= 0
    design = np.einsum("ap,bq->abpq", by, bx)[valid][:, active]
    if design.shape[0] < design.shape[1]:
        return 0.0  # fewer valid bins than terms: a null space
    return float(np.linalg.svd(np.sqrt(w)[:, None] * design, compute_uv=False)[-1] ** 2)


@pytest.mark.parametrize("name", list(SHIFT_CONFIGS))
@_settings(200)
@given(seed=SEEDS, c=st.floats(-1e3, 1e3, allow_nan=False), data=st.data())
def test_constant_offset_shifts_the_model(name, seed, c, data):
    shape, config = SHIFT_CONFIGS[name]
    m = data.draw(masks(missing_bins=config.usePolynomial))
    ref, sci = draw_batch(seed, shape, 2, m)
    shifted = dataclasses.replace(sci, image=sci.image + c)
    a = jm.match(ref, sci, config, raise_on_failure=False)
    b = jm.match(ref, shifted, config, raise_on_failure=False)
    status, _, model_a = assert_status_contract(a, sci.image)
    _, _, model_b = assert_status_contract(b, shifted.image)
    np.testing.assert_array_equal(b.status, status)
    for k in np.flatnonzero(status == 0):
        eps = RIDGE_PER_CELL * int(np.isfinite(np.asarray(a.grid_values[k])).sum())
        sigma2 = _sigma_min_squared(a, k, config, shape)
        if sigma2 < 100 * eps:
            continue  # the valid bins do not determine the model: no guarantee (above)
        bound = 10 * abs(c) * eps / sigma2 + 1e-13 * abs(c) + 1e-12
        assert np.max(np.abs(model_b[k] - model_a[k] + c)) <= bound


# ------------------------------------------------------ 2. self-match is zero
# diff = x - x is exactly 0 at every finite pixel (NaN/inf give NaN, unusable), so
# every bin has value 0 and scatter 0: the unweighted path, right-hand side 0, and
# the QR solve returns exactly 0. No tolerance.
SELF_CONFIGS = {
    "akima": ((80, 96), _cfg(binSize=16)),
    "cheb3-meanclip": (
        (64, 80),
        _cfg(binSize=16, usePolynomial=True, order=3, gridStatistic="MEANCLIP"),
    ),
}


@pytest.mark.parametrize("name", list(SELF_CONFIGS))
@_settings(400)
@given(seed=SEEDS, m=masks())
def test_matching_an_exposure_to_itself_gives_a_zero_model(name, seed, m):
    shape, config = SELF_CONFIGS[name]
    _, sci = draw_batch(seed, shape, 1, m)
    exposure = sci[0]
    result = jm.match(exposure, sci, config, raise_on_failure=False)
    status, coef, model = assert_status_contract(result, sci.image)
    usable = np.isfinite(np.asarray(exposure.image)) & (
        (np.asarray(exposure.mask) & exposure.bitmask(config.badMaskPlanes)) == 0
    )
    if status[0] == 0:
        assert np.all(coef == 0) and np.all(model == 0)
        np.testing.assert_array_equal(result.matched[0], exposure.image)
        assert float(result.fitRMS[0]) == 0.0 and float(result.matchedMSE[0]) == 0.0
        assert np.all(np.asarray(result.grid_weights[0])[np.isfinite(result.grid_values[0])] == 1)
    else:  # only when no bin has two usable pixels
        assert status[0] == 1
        assert usable.sum() < 2 or np.all(np.isnan(result.grid_values[0]))


# ---------------------------------------------------- 3. batch order is irrelevant
# Each exposure is fitted independently under vmap: a permutation of the batch
# permutes the results. Observed bit-identical; 1e-12 relative allows for a
# different vectorisation of the reductions.
ORDER_CONFIGS = {
    "natural-meanclip": (
        (64, 64),
        _cfg(binSize=16, interpStyle="NATURAL_SPLINE", gridStatistic="MEANCLIP"),
    ),
    "cheb3": ((64, 64), _cfg(binSize=16, usePolynomial=True, order=3)),
}


@pytest.mark.parametrize("name", list(ORDER_CONFIGS))
@_settings(150)
@given(seed=SEEDS, m=masks(), perm=st.permutations(range(4)))
def test_result_does_not_depend_on_the_batch_order(name, seed, m, perm):
    shape, config = ORDER_CONFIGS[name]
    ref, sci = draw_batch(seed, shape, 4, m)
    perm = np.asarray(perm)
    a = jm.match(ref, sci, config, raise_on_failure=False)
    b = jm.match(ref, jax.tree.map(lambda x: x[perm], sci), config, raise_on_failure=False)
    assert_status_contract(a, sci.image)
    np.testing.assert_array_equal(b.status, np.asarray(a.status)[perm])
    for field in ("fitRMS", "matchedMSE", "diffImVar", "grid_values", "grid_weights"):
        np.testing.assert_allclose(
            getattr(b, field), np.asarray(getattr(a, field))[perm], rtol=1e-12, atol=1e-12
        )
    np.testing.assert_allclose(
        b.model.coefficients, np.asarray(a.model.coefficients)[perm], rtol=1e-12, atol=1e-12
    )


# ------------------------------------------------------ 4. float32 vs float64
# Well-conditioned cases: moderate masks, every bin kept, MEAN / MEDIAN (a hard
# MEANCLIP cut can flip a pixel that sits on the threshold within float32 rounding,
# which moves a bin by ~3σ/n: not a rounding-size difference). The float32 run
# rounds the inputs to float32 (half an ulp of the data: 4.9e-4 ADU at a 1e4 sky)
# and computes in float32. Observed worst |Δmodel|: 2.9e-3 ADU at sky 1e4 (MEDIAN
# + Chebyshev, whose corners amplify the bin errors), 2.5e-5 at sky 100, 1.5e-5 at
# sky 0 with ~15 ADU pixels. Tolerance: 4e-6 × the largest usable |pixel| (32
# float32 epsilons of the data scale: 4e-2 ADU at 1e4, 4.4e-4 ADU at 100).
F32_CONFIGS = {
    "natural-mean": ((64, 64), _cfg(binSize=16, interpStyle="NATURAL_SPLINE")),
    "cheb3-median": (
        (64, 64),
        _cfg(binSize=16, usePolynomial=True, order=3, gridStatistic="MEDIAN"),
    ),
}


@pytest.mark.parametrize("name", list(F32_CONFIGS))
@_settings(250)
@given(seed=SEEDS, m=masks(missing_bins=False), sky=st.sampled_from([0.0, 100.0, 1e4]))
def test_float32_agrees_with_float64(name, seed, m, sky):
    shape, config = F32_CONFIGS[name]
    ref, sci = draw_batch(seed, shape, 2, m, sky=sky)
    r64 = jm.match(ref, sci, config.replace(dtype="float64"), raise_on_failure=False)
    r32 = jm.match(ref, sci, config.replace(dtype="float32"), raise_on_failure=False)
    assert r32.matched.dtype == np.float32 and r32.model.coefficients.dtype == np.float32
    status, _, m64 = assert_status_contract(r64, sci.image)
    _, _, m32 = assert_status_contract(r32, np.asarray(sci.image, np.float32))
    np.testing.assert_array_equal(r32.status, status)
    bits_ref = ref.bitmask(config.badMaskPlanes)
    bits_sci = sci.bitmask(config.badMaskPlanes)
    for k in np.flatnonzero(status == 0):
        usable = ((np.asarray(ref.mask) & bits_ref) == 0) & (
            (np.asarray(sci.mask[k]) & bits_sci) == 0
        )
        usable &= np.isfinite(np.asarray(sci.image[k]))
        scale = max(
            np.abs(np.asarray(ref.image))[usable].max(),
            np.abs(np.asarray(sci.image[k]))[usable].max(),
        )
        assert np.max(np.abs(m32[k].astype(float) - m64[k])) <= 4e-6 * scale


# ------------------------------------------------------------ 5. the oracle
# Same objective, solved by QR (jaxmatch) and by lstsq (oracle). With every bin
# valid the guarded problem has cond(A) ≲ 1e4 and the two agree to ~1e-12 of the
# model's scale (1e-9 allowed, as tests/test_match.py). With missing bins some
# directions are fixed only by the ridge ε (cond(A) up to ~1/√ε ≈ 1e5) and
# rounding is amplified: observed ≤ 2e-8, allowed 1e-6 (relative to max(1, |model|)).
ORACLE_CONFIGS = {
    "akima-mean": ((80, 96), _cfg(binSize=16)),
    "natural-meanclip-rough": (
        (64, 64),
        _cfg(
            binSize=16, interpStyle="NATURAL_SPLINE", gridStatistic="MEANCLIP", splineRoughness=0.1
        ),
    ),
    "linear-knots2-unweighted": (
        (75, 90),
        _cfg(binSize=16, interpStyle="LINEAR", splineKnotSpacing=2, approxWeighting=False),
    ),
    "cheb3-reduce": ((64, 80), _cfg(binSize=16, usePolynomial=True, order=3)),
    "cheb-tensor-median-throw": (
        (75, 90),
        _cfg(
            binSize=16,
            usePolynomial=True,
            order=2,
            orderY=1,
            chebyshevTerms="TENSOR",
            gridStatistic="MEDIAN",
            undersampleStyle="THROW_EXCEPTION",
        ),
    ),
}


@pytest.mark.parametrize("name", list(ORACLE_CONFIGS))
@_settings(300)
@given(seed=SEEDS, m=masks())
def test_agrees_with_the_oracle_on_random_masks(name, seed, m):
    shape, config = ORACLE_CONFIGS[name]
    ref, sci = draw_batch(seed, shape, 1, m)
    result = jm.match(ref, sci, config, raise_on_failure=False)
    status, coef, model = assert_status_contract(result, sci.image)
    expected = oracle_of(ref, sci, config, 0)
    assert status[0] == expected["status"]
    event(f"status {status[0]}")
    valid = np.isfinite(expected["cell_values"])
    np.testing.assert_array_equal(np.isfinite(result.grid_values[0]), valid)
    np.testing.assert_allclose(
        result.grid_values[0], expected["cell_values"], rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        result.grid_weights[0], expected["cell_weights"], rtol=1e-9, atol=1e-12
    )
    if status[0] != 0:
        return
    if config.usePolynomial:
        assert tuple(np.asarray(result.effective_order[0])) == tuple(expected["effective_order"])
        event(f"effective order {tuple(expected['effective_order'])}")
    event("every bin valid" if valid.all() else "missing bins")
    scale = max(1.0, float(np.max(np.abs(expected["model"]))))
    tol = (1e-9 if valid.all() else 1e-6) * scale
    np.testing.assert_allclose(model[0], expected["model"], rtol=0, atol=tol)
    coef_scale = max(1.0, float(np.max(np.abs(expected["coefficients"]))))
    np.testing.assert_allclose(
        coef[0], expected["coefficients"], rtol=0, atol=tol / scale * coef_scale
    )
    np.testing.assert_allclose(result.matched[0], expected["matched"], rtol=0, atol=tol)
    for name_, key in (("fitRMS", "fit_rms"), ("matchedMSE", "matched_mse")):
        np.testing.assert_allclose(getattr(result, name_)[0], expected[key], rtol=0, atol=tol)
    np.testing.assert_allclose(result.diffImVar[0], expected["diff_im_var"], rtol=1e-12)
