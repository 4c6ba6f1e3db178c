"""Shared test data: small exposure pairs with masks, NaNs and a smooth difference."""

import equinox as eqx
import numpy as np

import jaxmatch as jm
from jaxmatch import DEFAULT_MASK_PLANES

BAD = 1 << DEFAULT_MASK_PLANES["BAD"]
DETECTED = 1 << DEFAULT_MASK_PLANES["DETECTED"]
NO_DATA = 1 << DEFAULT_MASK_PLANES["NO_DATA"]
SUSPECT = 1 << DEFAULT_MASK_PLANES["SUSPECT"]  # not in the default badMaskPlanes


def smooth_field(shape, rng, amplitude=3.0):
    """A tilted plane plus low-order structure [ADU] on an (H, W) grid."""
    h, w = shape
    y, x = np.mgrid[:h, :w]
    u, v = 2 * (x + 0.5) / w - 1, 2 * (y + 0.5) / h - 1
    c = rng.normal(size=6)
    return amplitude * (
        c[0]
        + c[1] * u
        + c[2] * v
        + 0.5 * c[3] * u * v
        + 0.3 * c[4] * (2 * u**2 - 1)
        + 0.3 * c[5] * np.sin(2.0 * v)
    )


def make_pair_batch(rng, shape, n_sci=2, *, sigma=1.0, sky=100.0, defects=True):
    """A reference and ``n_sci`` science exposures whose difference is smooth + noise.

    With ``defects``: masked blobs (DETECTED) with large values, BAD pixels, NaN
    pixels flagged NO_DATA, a few unflagged NaNs, and SUSPECT bits (not bad).
    Returns ``(ref, sci_batch, truths)`` with truths[i] = ref background - sci background.
    """
    h, w = shape
    ref_img = sky + rng.normal(0, sigma, shape)
    ref_mask = np.zeros(shape, np.int32)
    scis, truths = [], []
    for _ in range(n_sci):
        truth = smooth_field(shape, rng)
        img = sky - truth + rng.normal(0, sigma, shape)
        mask = np.zeros(shape, np.int32)
        if defects:
            for _ in range(3):
                cy, cx = rng.integers(0, h), rng.integers(0, w)
                sl = (slice(max(cy - 3, 0), cy + 3), slice(max(cx - 3, 0), cx + 3))
                img[sl] += 500.0
                mask[sl] |= DETECTED
            bad = rng.random(shape) < 0.01
            img[bad] = -1e4
            mask[bad] |= BAD
            nodata = rng.random(shape) < 0.01
            img[nodata] = np.nan
            mask[nodata] |= NO_DATA
            img[rng.random(shape) < 0.002] = np.inf  # unflagged non-finite pixels
            mask[rng.random(shape) < 0.05] |= SUSPECT
        scis.append(jm.Exposure(img, mask, np.full(shape, sigma**2)))
        truths.append(truth)
    if defects:
        ref_mask[rng.random(shape) < 0.01] |= BAD
        ref_img[ref_mask != 0] = 1e5
    ref = jm.Exposure(ref_img, ref_mask, np.full(shape, sigma**2))
    return ref, jm.stack_exposures(scis), np.stack(truths)


def oracle_of(ref, sci, config, k=None):
    """The NumPy oracle (`oracle.oracle_match`) on `jaxmatch` exposures: ``ref``
    against ``sci`` (a single exposure) or against exposure ``k`` of the batch
    ``sci``, with the config's bad-pixel bits and keyword arguments."""
    from oracle import oracle_match

    pick = (lambda a: np.asarray(a)) if k is None else (lambda a: np.asarray(a[k]))
    return oracle_match(
        np.asarray(ref.image),
        np.asarray(ref.mask),
        np.asarray(ref.variance),
        pick(sci.image),
        pick(sci.mask),
        pick(sci.variance),
        bad_bits_ref=ref.bitmask(config.badMaskPlanes),
        bad_bits_sci=sci.bitmask(config.badMaskPlanes),
        **oracle_kwargs(config),
    )


def oracle_kwargs(config):
    """The oracle's keyword arguments for a MatchBackgroundsConfig."""
    return dict(
        use_polynomial=config.usePolynomial,
        order=config.order,
        order_y=config.orderY,
        chebyshev_terms=config.chebyshevTerms,
        grid_statistic=config.gridStatistic,
        undersample_style=config.undersampleStyle,
        bin_size=config.binSize,
        interp_style=config.interpStyle,
        num_sigma_clip=config.numSigmaClip,
        num_iter=config.numIter,
        approx_weighting=config.approxWeighting,
        grid_stdev_epsilon=config.gridStdevEpsilon,
        roughness=config.splineRoughness,
        knot_spacing=config.splineKnotSpacing,
        clip_sharpness=config.clipSharpness,
    )


_model_image = eqx.filter_jit(lambda model: model.getImage())


def assert_status_contract(result, sci_images, *, allow_infinite_diagnostics=False):
    """Success ⇒ finite coefficients, model and diagnostics (status 0 and 5: none NaN;
    status 4: model valid, fitRMS or diffImVar NaN); failure ⇒ NaN, science kept.

    With ``allow_infinite_diagnostics`` a successful fit may report an infinite
    ``fitRMS`` / ``matchedMSE`` (overflow on absurd pixel values), never NaN.
    Returns ``(status, coefficients, model images)``.
    """
    status = np.asarray(result.status)
    coef = np.asarray(result.model.coefficients)
    model = np.asarray(_model_image(result.model))
    for k, s in enumerate(status):
        if s in (0, 4, 5):  # fitted: status 5 (ILL_CONDITIONED) is applied, with a warning
            assert np.all(np.isfinite(coef[k])) and np.all(np.isfinite(model[k]))
            nan = [np.isnan(getattr(result, n)[k]) for n in ("fitRMS", "diffImVar")]
            assert (s == 4) == any(nan)
            assert not np.isnan(result.matchedMSE[k])
            for value in (result.fitRMS[k], result.matchedMSE[k]):
                assert np.isnan(value) or allow_infinite_diagnostics or np.isfinite(value)
        else:
            assert int(s) in jm.STATUS_MESSAGES
            assert np.all(np.isnan(coef[k]))
            for name in ("fitRMS", "matchedMSE", "diffImVar"):
                assert np.isnan(getattr(result, name)[k])
            np.testing.assert_array_equal(result.matched[k], sci_images[k])
    return status, coef, model
