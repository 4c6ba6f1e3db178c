"""The jaxmatch algorithm (docs/algorithm.md) in vectorised NumPy/SciPy: the CPU baseline.

What a careful NumPy programmer would write, not a port of the JAX code:

- the exposures are processed in chunks of ``chunk`` exposures (bounded
  temporaries), each chunk vectorised over exposures *and* bins: the difference
  image ``(c, H, W)`` is viewed as ``(c, ny, sy, nx, sx)`` (a free reshape when the
  bins tile the image, one fancy-index gather with padding otherwise) and reduced
  over the two within-bin axes with ``np.add.reduce(..., where=keep)``;
- ``MEANCLIP``: mean/std, then ``numIter`` clip passes (§3), all bins at once;
  ``MEDIAN``: ``np.sort`` of the usable values of each bin (unusable → +inf);
- the fit: the stacked weighted/penalised/guarded matrix of §6 solved with
  ``np.linalg.lstsq`` per exposure (float64; the problems are tiny);
- the model image separably, ``Y (H×ky) · C · Xᵀ (kx×W)`` as one batched
  ``matmul`` (AKIMA: ``scipy.interpolate.Akima1DInterpolator`` along y then x);
- the diagnostics of §8 (``fitRMS``, ``matchedMSE``, ``diffImVar``), so it
  produces everything `jaxmatch.match` does.

Pixel arithmetic stays in the input dtype (as jaxmatch's does); the bases and the
solve are float64 and cast back. Supported: every gridStatistic and spline style,
Chebyshev TOTAL/TENSOR with THROW_EXCEPTION / REDUCE_INTERP_ORDER (not
INCREASE_NXNYSAMPLE, which re-bins data-dependently).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import Akima1DInterpolator, CubicSpline

SUCCESS, NO_OVERLAP, UNDERSAMPLED, NONFINITE = 0, 1, 2, 3
MIN_POINTS = {"CONSTANT": 1, "LINEAR": 2, "NATURAL_SPLINE": 3, "AKIMA_SPLINE": 5}
DEGREE = {"CONSTANT": 0, "LINEAR": 1, "NATURAL_SPLINE": 3, "AKIMA_SPLINE": 3}
SPLINE_ROUGHNESS_FLOOR = 1e-6
RIDGE_PER_CELL = 1e-10


# ----------------------------------------------------------------------------- layout
def cell_edges(length, bin_size):
    """afw's fit-grid cells along an axis (§2): starts, sizes."""
    n = -(-length // bin_size)
    ends = np.minimum(((np.arange(n) + 1) * length + n // 2) // n, length)
    starts = np.concatenate([[0], ends[:-1]])
    return starts, ends - starts


def bin_edges(length, bin_size):
    """Diagnostic bins ``[i b, min((i+1) b, L))`` (§8)."""
    starts = np.arange(0, length, bin_size)
    return starts, np.minimum(starts + bin_size, length) - starts


def _cells(a, edges_y, edges_x):
    """``a`` (c, H, W) as (c, ny, sy, nx, sx) plus an in-bin mask (None if all inside)."""
    (ys, ysz), (xs, xsz) = edges_y, edges_x
    c, h, w = a.shape
    sy, sx = int(ysz.max()), int(xsz.max())
    ny, nx = len(ys), len(xs)
    if (ysz == sy).all() and (xsz == sx).all() and ny * sy == h and nx * sx == w:
        return a.reshape(c, ny, sy, nx, sx), None
    iy = np.minimum(ys[:, None] + np.arange(sy), h - 1)
    ix = np.minimum(xs[:, None] + np.arange(sx), w - 1)
    cells = a[:, iy[:, :, None, None], ix[None, None, :, :]]
    inside = (np.arange(sy) < ysz[:, None])[:, :, None, None] & (np.arange(sx) < xsz[:, None])
    return cells, inside[None]


# ------------------------------------------------------------------------- statistics
def _moments(x, keep, axes):
    """Count, mean, sample std (ddof=1) of ``x`` over ``keep``; two passes (shifted)."""
    n = np.count_nonzero(keep, axis=axes)
    total = np.add.reduce(x, axis=axes, where=keep)
    mean = total / np.maximum(n, 1).astype(x.dtype)
    d = x - np.expand_dims(mean, axes)
    np.multiply(d, d, out=d)
    var = np.add.reduce(d, axis=axes, where=keep) / np.maximum(n - 1, 1).astype(x.dtype)
    std = np.sqrt(np.where(n >= 2, var, np.nan))
    return n, np.where(n >= 1, mean, np.nan), std


def masked_statistic(x, usable, axes, statistic, num_sigma_clip, num_iter):
    """``(value, s, m, n)`` of ``x`` over ``usable``, reduced over ``axes`` (§3)."""
    n, mean, std = _moments(x, usable, axes)
    if statistic == "MEAN":
        return mean, std, n, n
    if statistic == "MEDIAN":
        return _median(x, usable, axes), std, n, n
    keep, m, value, s = usable, n, mean, std
    for _ in range(num_iter):
        d = x - np.expand_dims(value, axes)
        np.abs(d, out=d)
        trial = d <= np.expand_dims(num_sigma_clip * s, axes)  # NaN limit → False
        trial &= usable
        m_trial = np.count_nonzero(trial, axis=axes)
        ok = (s > 0) & (m_trial >= 2)
        keep = np.where(np.expand_dims(ok, axes), trial, keep)
        m, value, s = _moments(x, keep, axes)
    return value, s, m, n


def _median(x, usable, axes):
    """Median of the usable values over ``axes`` (mean of the middle two for even n)."""
    other = [a for a in range(x.ndim) if a not in axes]
    xt = np.where(usable, x, np.inf).transpose(other + list(axes))
    lead = xt.shape[: len(other)]
    flat = np.sort(xt.reshape(lead + (-1,)), axis=-1)
    n = np.count_nonzero(usable, axis=axes)
    lo = np.clip((n - 1) // 2, 0, flat.shape[-1] - 1)[..., None]
    hi = np.clip(n // 2, 0, flat.shape[-1] - 1)[..., None]
    med = 0.5 * (np.take_along_axis(flat, lo, -1) + np.take_along_axis(flat, hi, -1))[..., 0]
    return np.where(n >= 1, med, np.nan)


def grid_statistics(diff, usable, edges_y, edges_x, statistic, clip, niter):
    """Per-bin ``(value, s, m, n)`` (c, ny, nx) of a chunk of difference images."""
    x, inside = _cells(diff, edges_y, edges_x)
    use, _ = _cells(usable, edges_y, edges_x)
    if inside is not None:
        use = use & inside
    return masked_statistic(x, use, (2, 4), statistic, clip, niter)


# ------------------------------------------------------------------------------ bases
def chebyshev_matrix(coords, length, order):
    t = 2.0 * (np.asarray(coords, float) + 0.5) / length - 1.0
    cols = [np.ones_like(t), t][: order + 1]
    for _ in range(2, order + 1):
        cols.append(2.0 * t * cols[-1] - cols[-2])
    return np.stack(cols, axis=-1)


def knots(centres, spacing):
    n = len(centres)
    if spacing == 1 or n == 1:
        return np.asarray(centres, float)
    k = math.ceil((n - 1) / spacing) + 1
    if k == 1:
        return np.array([(centres[0] + centres[-1]) / 2.0])
    return np.linspace(centres[0], centres[-1], k)


def cardinal_basis(x, t, degree):
    """Cardinal spline basis (k functions, value 1 at one knot and 0 at the others)."""
    x = np.asarray(x, float)
    k = len(t)
    if k == 1:
        return np.ones((len(x), 1))
    if degree == 0:
        idx = np.searchsorted((t[1:] + t[:-1]) / 2.0, x, side="right")
        return (idx[:, None] == np.arange(k)).astype(float)
    if degree == 1 or k == 2:
        a = np.clip(np.searchsorted(t, x, side="right") - 1, 0, k - 2)
        tau = (x - t[a]) / (t[a + 1] - t[a])
        out = np.zeros((len(x), k))
        out[np.arange(len(x)), a] = 1 - tau
        out[np.arange(len(x)), a + 1] += tau
        return out
    # Natural cubic through the identity (scipy), continued linearly outside.
    cs = CubicSpline(t, np.eye(k), axis=0, bc_type="natural")
    out = cs(np.clip(x, t[0], t[-1]))
    lo, hi = x < t[0], x > t[-1]
    out[lo] += (x[lo] - t[0])[:, None] * cs(t[0], 1)[None]
    out[hi] += (x[hi] - t[-1])[:, None] * cs(t[-1], 1)[None]
    return out


def _akima(x, t, values, axis):
    return Akima1DInterpolator(t, values, axis=axis, extrapolate=True)(x)


# ------------------------------------------------------------------------------- plan
def plan(config, shape, bin_size):
    """Static layout: grids, bases at the cell centres and at the pixels, penalty."""
    h, w = shape
    fy, fx = cell_edges(h, bin_size), cell_edges(w, bin_size)
    cy, cx = fy[0] + fy[1] / 2.0 - 0.5, fx[0] + fx[1] / 2.0 - 0.5
    py, px = np.arange(h, dtype=float), np.arange(w, dtype=float)
    p = dict(
        fit_y=fy,
        fit_x=fx,
        diag_y=bin_edges(h, config.binSize),
        diag_x=bin_edges(w, config.binSize),
        style=None,
    )
    if config.usePolynomial:
        oy = config.order if config.orderY is None else config.orderY
        ox = config.order
        for side, order in (
            ((h, oy), (w, ox))
            if config.chebyshevTerms == "TENSOR"
            else ((min(h, w), config.order),)
        ):
            if side < bin_size or order > math.ceil(side / bin_size) - 1:
                raise ValueError("order too high for the grid (see jaxmatch.match)")
        p.update(
            kind="CHEBYSHEV",
            order=(oy, ox),
            by=chebyshev_matrix(cy, h, oy),
            bx=chebyshev_matrix(cx, w, ox),
            Y=chebyshev_matrix(py, h, oy),
            X=chebyshev_matrix(px, w, ox),
            penalty=np.zeros((0, (oy + 1) * (ox + 1))),
        )
        return p
    ty, tx = knots(cy, config.splineKnotSpacing), knots(cx, config.splineKnotSpacing)
    style = config.interpStyle
    if min(len(ty), len(tx)) < MIN_POINTS[style]:
        if config.undersampleStyle != "REDUCE_INTERP_ORDER":
            raise ValueError("too few knots for interpStyle")
        m = min(len(ty), len(tx))
        style = (
            "AKIMA_SPLINE"
            if m >= 5
            else "NATURAL_SPLINE"
            if m >= 3
            else "LINEAR"
            if m == 2
            else "CONSTANT"
        )
    deg = DEGREE[style]
    d = 1 if deg == 0 else 2
    dy = np.diff(np.eye(len(ty)), n=d, axis=0) if len(ty) > d else np.zeros((0, len(ty)))
    dx = np.diff(np.eye(len(tx)), n=d, axis=0) if len(tx) > d else np.zeros((0, len(tx)))
    p.update(
        kind="SPLINE",
        style=style,
        ty=ty,
        tx=tx,
        by=cardinal_basis(cy, ty, deg),
        bx=cardinal_basis(cx, tx, deg),
        Y=cardinal_basis(py, ty, deg),
        X=cardinal_basis(px, tx, deg),
        penalty=np.concatenate([np.kron(dy, np.eye(len(tx))), np.kron(np.eye(len(ty)), dx)]),
    )
    return p


def _active(config, p, valid):
    """Active Chebyshev terms after the undersampling rule (§5), per exposure."""
    oy, ox = p["order"]
    mx = valid.any(axis=0).sum()
    my = valid.any(axis=1).sum()
    m = min(mx, my)
    reduce = config.undersampleStyle == "REDUCE_INTERP_ORDER"
    pp, qq = np.arange(oy + 1)[:, None], np.arange(ox + 1)[None, :]
    if config.chebyshevTerms == "TOTAL":
        under = m <= config.order
        eff = m - 1 if (under and reduce) else config.order
        active = (pp + qq <= max(oy, ox)) & (pp + qq <= eff)
    else:
        under = (mx <= ox) or (my <= oy)
        ex, ey = (min(ox, mx - 1), min(oy, my - 1)) if reduce else (ox, oy)
        active = (pp <= ey) & (qq <= ex)
    return active, under and not reduce


# ------------------------------------------------------------------------------ match
def match_numpy(
    ref_image,
    ref_mask,
    ref_var,
    sci_image,
    sci_mask,
    sci_var,
    config,
    bits_ref,
    bits_sci,
    *,
    chunk=None,
    out=None,
):
    """Match N science exposures to the reference: ``sci + model``, plus diagnostics.

    Arrays are NumPy ``(H, W)`` (reference) and ``(N, H, W)`` (science); ``bits_*`` the
    OR of the bad mask planes' bits. ``chunk`` exposures are processed at once
    (default: about 4 Mpixel per chunk). Returns a dict with ``matched``,
    ``coefficients``, ``fitRMS``, ``matchedMSE``, ``diffImVar``, ``status``.
    """
    if config.usePolynomial and config.undersampleStyle == "INCREASE_NXNYSAMPLE":
        raise NotImplementedError("INCREASE_NXNYSAMPLE is not in the NumPy baseline")
    n, h, w = sci_image.shape
    dtype = sci_image.dtype
    p = plan(config, (h, w), config.binSize)
    chunk = chunk or max(1, (1 << 22) // (h * w))
    ky, kx = p["by"].shape[1], p["bx"].shape[1]
    design = np.einsum("ap,bq->abpq", p["by"], p["bx"]).reshape(-1, ky * kx)
    Y, Xt = p["Y"].astype(dtype), np.ascontiguousarray(p["X"].T.astype(dtype))
    stat = (config.gridStatistic, config.numSigmaClip, config.numIter)
    same_diag = (
        all(
            np.array_equal(a, b) for a, b in zip(p["fit_y"] + p["fit_x"], p["diag_y"] + p["diag_x"])
        )
        and len(p["fit_y"][0]) == len(p["diag_y"][0])
        and len(p["fit_x"][0]) == len(p["diag_x"][0])
    )
    ref_ok = (ref_mask & bits_ref) == 0
    matched = np.empty_like(sci_image) if out is None else out
    coef_all = np.full((n, ky, kx), np.nan)
    rms, mse, dvar = (np.full(n, np.nan) for _ in range(3))
    status = np.zeros(n, np.int32)
    ypix = p["diag_y"][0] + p["diag_y"][1] // 2
    xpix = p["diag_x"][0] + p["diag_x"][1] // 2
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        sci = sci_image[sl]
        diff = ref_image - sci  # (c, H, W)
        usable = np.isfinite(diff)
        usable &= ref_ok
        usable &= (sci_mask[sl] & bits_sci) == 0
        x = np.where(usable, diff, 0)  # unusable pixels never reach the arithmetic
        value, s, m, cnt = grid_statistics(x, usable, p["fit_y"], p["fit_x"], *stat)
        valid = cnt >= 2
        eps = config.gridStdevEpsilon
        err = np.maximum(np.where(valid, s, 1.0), eps) / np.sqrt(np.where(valid, m, 1))
        coefs = np.zeros((sci.shape[0], ky, kx))
        for j in range(sci.shape[0]):
            i = lo + j
            v = valid[j]
            nv = int(v.sum())
            if nv == 0:
                status[i] = NO_OVERLAP
                continue
            weighted = config.approxWeighting and bool(np.any(err[j][v] > eps))
            sw = np.where(v, 1.0 / err[j] if weighted else 1.0, 0.0).astype(float)
            sw /= np.sqrt(np.sum(sw * sw) / nv)
            z = np.where(v, value[j], 0.0).astype(float)
            if p["kind"] == "CHEBYSHEV":
                active, under = _active(config, p, v)
                if under:
                    status[i] = UNDERSAMPLED
                    continue
                sqrt_mu = 0.0
            else:
                active = np.ones((ky, kx), bool)
                sqrt_mu = math.sqrt(config.splineRoughness + SPLINE_ROUGHNESS_FLOOR)
            act = active.ravel().astype(float)
            ridge = np.diag(math.sqrt(RIDGE_PER_CELL * nv) * act + (1 - act))
            a = np.concatenate(
                [sw.ravel()[:, None] * design * act, sqrt_mu * p["penalty"] * act, ridge]
            )
            # docs/algorithm.md §6: fit the deviation from the weighted bin mean and
            # add the mean back as the constant function.
            offset = float(np.sum(sw * sw * z) / np.sum(sw * sw))
            b = np.concatenate(
                [sw.ravel() * (z.ravel() - offset), np.zeros(a.shape[0] - design.shape[0])]
            )
            constant = np.eye(ky * kx)[0] if p["kind"] == "CHEBYSHEV" else np.ones(ky * kx)
            c = np.linalg.lstsq(a, b, rcond=None)[0] * act + offset * constant
            if not np.all(np.isfinite(c)):
                status[i] = NONFINITE
                continue
            coefs[j] = c.reshape(ky, kx)
        coef_all[sl] = np.where(status[sl, None, None] == SUCCESS, coefs, np.nan)
        # Model image, separably: (H, ky) @ (c, ky, kx) @ (kx, W).
        if p["style"] == "AKIMA_SPLINE":
            model = np.stack(
                [
                    _akima(
                        np.arange(w, dtype=float),
                        p["tx"],
                        _akima(np.arange(h, dtype=float), p["ty"], cj, 0),
                        1,
                    ).astype(dtype)
                    for cj in coefs
                ]
            )
        else:
            model = np.matmul(np.matmul(Y, coefs.astype(dtype)), Xt)
        ok = status[sl] == SUCCESS
        # Diagnostics (§8).
        if same_diag:
            z_diag, valid_diag = value, valid
        else:
            z_diag, _, _, nd = grid_statistics(x, usable, p["diag_y"], p["diag_x"], *stat)
            valid_diag = nd >= 2
        at_c = model[:, ypix[:, None], xpix[None, :]]
        res = np.where(valid_diag, np.where(valid_diag, z_diag, 0) - at_c, 0.0)
        nd = valid_diag.sum(axis=(1, 2))
        rms[sl] = np.where(
            ok & (nd > 0), np.sqrt((res * res).sum((1, 2)) / np.maximum(nd, 1)), np.nan
        )
        d = x - model
        np.multiply(d, d, out=d)
        cu = np.count_nonzero(usable, axis=(1, 2))
        mse[sl] = np.where(
            ok, np.add.reduce(d, axis=(1, 2), where=usable) / np.maximum(cu, 1), np.nan
        )
        del d
        var = ref_var + sci_var[sl]
        ok_var = usable & np.isfinite(var)
        var = np.where(ok_var, var, 0)
        dv, _, _, _ = masked_statistic(
            var, ok_var, (1, 2), "MEANCLIP", config.numSigmaClip, config.numIter
        )
        dvar[sl] = np.where(ok, dv, np.nan)
        del var, ok_var
        # matched = sci + model where the fit succeeded (the unchanged image otherwise).
        model[~ok] = 0
        np.add(sci, model, out=matched[sl])
    return dict(
        matched=matched,
        coefficients=coef_all,
        fitRMS=rms,
        matchedMSE=mse,
        diffImVar=dvar,
        status=status,
    )
