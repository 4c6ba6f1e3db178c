"""Plain-NumPy float64 reference implementation of ``docs/algorithm.md``.

This module is the test oracle for the JAX engine.  It is written independently
from the engine, directly from the document, favouring loops and explicit
constructions over speed.  Section numbers in the comments refer to
``docs/algorithm.md``.

Readings chosen where the document leaves room (the most literal one each time):

* MEANCLIP: every iteration cuts the *full* set of usable pixels around the
  previous ``(mu, s)`` (a pixel rejected earlier can come back).
* ``cell_statistic`` with fewer than two values: ``s`` is NaN (so MEANCLIP keeps
  the set; ``diffImVar`` of a single pixel is that pixel); no values give NaN.
* fitRMS bins use the configured ``binSize`` even after INCREASE_NXNYSAMPLE
  re-binned the fit grid (as LSST's ``_gridImage(..., self.config.binSize)``).
* INCREASE_NXNYSAMPLE: LSST's ``(m * binSize) // (order + 1)`` is a number of
  cells per axis (afw's setNxSample/setNySample); a re-binned grid with no valid
  cell is "still undersampled" (status 2, not 1); with fewer than one cell (or
  more cells than pixels) the original grid and ``bin_size_used = binSize`` are
  reported, else ``bin_size_used`` is the largest cell side.
* A failed exposure's ``model`` is NaN (the NaN coefficients' model);
  ``effective_order`` is then the requested ``(orderY, order)``.
* ``chebyshev_terms="TOTAL"`` ignores ``order_y``; ``C`` is ``(order+1, order+1)``.
* ``NONFINITE`` is raised when the coefficients or the model image are not all finite.
"""

import math

import numpy as np
from scipy.interpolate import Akima1DInterpolator

STATUS_SUCCESS = 0
STATUS_NO_OVERLAP = 1
STATUS_UNDERSAMPLED = 2
STATUS_NONFINITE = 3

LAMBDA_FLOOR_SPLINE = 1e-6
LAMBDA_FLOOR_CHEBYSHEV = 1e-12
EPSILON_PER_VALID_CELL = 1e-10

# Section 5: spline styles, their degree and afw's minimum number of knots per axis.
SPLINE_DEGREE = {"CONSTANT": 0, "LINEAR": 1, "NATURAL_SPLINE": 3, "AKIMA_SPLINE": 3}
SPLINE_MIN_KNOTS = {"CONSTANT": 1, "LINEAR": 2, "NATURAL_SPLINE": 3, "AKIMA_SPLINE": 5}
SPLINE_RANK = ["CONSTANT", "LINEAR", "NATURAL_SPLINE", "AKIMA_SPLINE"]


# --------------------------------------------------------------------------
# Section 2: the fit grid
# --------------------------------------------------------------------------
def cell_edges(length, bin_size, n=None):
    """afw Background cell layout along one axis: ``(starts, sizes)`` as int arrays.

    ``n``: the number of cells (default ``ceil(length / bin_size)``)."""
    length = int(length)
    bin_size = int(bin_size)
    n = -(-length // bin_size) if n is None else int(n)  # ceil(L / b) in integers
    starts = []
    sizes = []
    previous_end = 0
    for i in range(n):
        end = min(((i + 1) * length + n // 2) // n, length)
        start = 0 if i == 0 else previous_end
        starts.append(start)
        sizes.append(end - start)
        previous_end = end
    return np.array(starts, dtype=np.int64), np.array(sizes, dtype=np.int64)


def cell_centres(starts, sizes):
    """Cell centres ``c_i = start_i + size_i / 2 - 0.5`` (pixel coordinates)."""
    return np.asarray(starts, dtype=np.float64) + np.asarray(sizes, dtype=np.float64) / 2.0 - 0.5


# --------------------------------------------------------------------------
# Section 3: cell statistic
# --------------------------------------------------------------------------
def _mean(values):
    return float(np.mean(values)) if len(values) > 0 else math.nan


def _sample_std(values):
    if len(values) < 2:
        return math.nan
    return float(np.std(values, ddof=1))


def cell_statistic(values_1d_usable, statistic, num_sigma_clip, num_iter, clip_sharpness=None):
    """Statistic of the usable values of one cell: ``(value, s, m)``.

    The valid-cell rule (``n >= 2``) is applied by the caller; here fewer than
    two values simply give a NaN standard deviation (and NaN everywhere for none).
    """
    x = np.asarray(values_1d_usable, dtype=np.float64).ravel()
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if statistic == "MEAN":
        return _mean(x), _sample_std(x), n
    if statistic == "MEDIAN":
        return float(np.median(x)), _sample_std(x), n
    if statistic == "MEANCLIP" and clip_sharpness is not None:
        # Smooth clipping: weights sigmoid(beta (nsig - |x - mu| / s)).
        w = np.ones(n)
        mu, s = _mean(x), _sample_std(x)
        for _ in range(int(num_iter)):
            if not (s > 0):
                continue
            trial = 1.0 / (1.0 + np.exp(-clip_sharpness * (num_sigma_clip - np.abs(x - mu) / s)))
            if trial.sum() < 2:
                continue
            w = trial
            mu = float(np.sum(w * x) / np.sum(w))
            s = float(np.sqrt(np.sum(w * (x - mu) ** 2) / (np.sum(w) - 1)))
        return mu, s, float(np.sum(w))
    if statistic == "MEANCLIP":
        kept = x
        mu = _mean(kept)
        s = _sample_std(kept)
        for _ in range(int(num_iter)):
            if s == 0.0 or math.isnan(s):
                candidate = None
            else:
                # The cut is applied to all usable pixels (most literal reading).
                candidate = x[np.abs(x - mu) <= num_sigma_clip * s]
                if len(candidate) < 2:
                    candidate = None
            if candidate is not None:
                kept = candidate
            mu = _mean(kept)
            s = _sample_std(kept)
        return mu, s, len(kept)
    raise ValueError(f"unknown statistic {statistic!r}")


# --------------------------------------------------------------------------
# Bases (section 5)
# --------------------------------------------------------------------------
def chebyshev_matrix(t, order):
    """``T_0(t) … T_order(t)`` by the three-term recurrence, shape ``(len(t), order+1)``."""
    t = np.asarray(t, dtype=np.float64).ravel()
    out = np.zeros((len(t), order + 1), dtype=np.float64)
    out[:, 0] = 1.0
    if order >= 1:
        out[:, 1] = t
    for k in range(1, order):
        out[:, k + 1] = 2.0 * t * out[:, k] - out[:, k - 1]
    return out


def _natural_second_derivatives(knots, values):
    """Second derivatives of the natural cubic spline through ``(knots, values)``."""
    k = len(knots)
    h = np.diff(knots)
    second = np.zeros(k, dtype=np.float64)
    if k < 3:
        return second
    size = k - 2
    a = np.zeros((size, size), dtype=np.float64)
    rhs = np.zeros(size, dtype=np.float64)
    for r in range(size):
        i = r + 1  # interior knot index
        if r > 0:
            a[r, r - 1] = h[i - 1]
        a[r, r] = 2.0 * (h[i - 1] + h[i])
        if r < size - 1:
            a[r, r + 1] = h[i]
        rhs[r] = 6.0 * ((values[i + 1] - values[i]) / h[i] - (values[i] - values[i - 1]) / h[i - 1])
    second[1:-1] = np.linalg.solve(a, rhs)
    return second


def _natural_spline_eval(knots, values, x):
    """Natural cubic spline through the knot values, extended linearly outside."""
    k = len(knots)
    h = np.diff(knots)
    mm = _natural_second_derivatives(knots, values)
    out = np.empty(len(x), dtype=np.float64)
    # Interval index, clipped so the end intervals also serve the points on the end knots.
    idx = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, k - 2)
    hi = h[idx]
    a = (knots[idx + 1] - x) / hi
    b = (x - knots[idx]) / hi
    inside = (a**3 - a) * mm[idx] + (b**3 - b) * mm[idx + 1]
    out[:] = a * values[idx] + b * values[idx + 1] + inside * hi**2 / 6.0
    # Linear extension with the end slopes of the spline.
    slope_left = (values[1] - values[0]) / h[0] - h[0] * (2.0 * mm[0] + mm[1]) / 6.0
    slope_right = (values[-1] - values[-2]) / h[-1] + h[-1] * (mm[-2] + 2.0 * mm[-1]) / 6.0
    left = x < knots[0]
    right = x > knots[-1]
    out[left] = values[0] + slope_left * (x[left] - knots[0])
    out[right] = values[-1] + slope_right * (x[right] - knots[-1])
    return out


def _linear_eval(knots, values, x):
    """Piecewise-linear interpolation, extended with the end segments' slopes."""
    k = len(knots)
    idx = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, k - 2)
    x0 = knots[idx]
    x1 = knots[idx + 1]
    frac = (x - x0) / (x1 - x0)
    return values[idx] + (values[idx + 1] - values[idx]) * frac


def cardinal_basis(x, knots, degree):
    """Cardinal basis (column ``j`` = the spline through the ``j``-th unit vector)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    knots = np.asarray(knots, dtype=np.float64).ravel()
    k = len(knots)
    out = np.zeros((len(x), k), dtype=np.float64)
    if k == 1:
        out[:, 0] = 1.0
        return out
    if degree == 0:
        midpoints = 0.5 * (knots[:-1] + knots[1:])
        # A point on a boundary belongs to the upper knot.
        nearest = np.searchsorted(midpoints, x, side="right")
        for row, j in enumerate(nearest):
            out[row, j] = 1.0
        return out
    for j in range(k):
        unit = np.zeros(k, dtype=np.float64)
        unit[j] = 1.0
        if degree == 1 or k == 2:
            out[:, j] = _linear_eval(knots, unit, x)
        elif degree == 3:
            out[:, j] = _natural_spline_eval(knots, unit, x)
        else:
            raise ValueError(f"unsupported degree {degree}")
    return out


def difference_matrix(k, order):
    """``order``-th difference matrix, shape ``(k - order, k)`` (no rows if ``k <= order``)."""
    rows = max(k - order, 0)
    d = np.eye(k, dtype=np.float64)
    for _ in range(order):
        d = d[1:, :] - d[:-1, :]
    return d[:rows, :].reshape(rows, k)


def spline_knots(centres, knot_spacing):
    """Knots along an axis (section 5)."""
    centres = np.asarray(centres, dtype=np.float64)
    n = len(centres)
    if knot_spacing <= 1:
        return centres.copy()
    k = int(math.ceil((n - 1) / knot_spacing)) + 1
    if k == 1:
        return np.array([(centres[0] + centres[-1]) / 2.0])
    return np.linspace(centres[0], centres[-1], k)


# --------------------------------------------------------------------------
# Sections 2-4: grid statistics and weights
# --------------------------------------------------------------------------
def _grid(
    diff, usable, bin_size, statistic, num_sigma_clip, num_iter, eps, clip_sharpness=None, n=None
):
    """Cell values, errors, valid flags and normalised weights of the fit grid."""
    height, width = diff.shape
    ys, yn = cell_edges(height, bin_size, n)
    xs, xn = cell_edges(width, bin_size, n)
    ny, nx = len(ys), len(xs)
    values = np.full((ny, nx), np.nan)
    errors = np.full((ny, nx), np.nan)
    valid = np.zeros((ny, nx), dtype=bool)
    for i in range(ny):
        for j in range(nx):
            block = diff[ys[i] : ys[i] + yn[i], xs[j] : xs[j] + xn[j]]
            ok = usable[ys[i] : ys[i] + yn[i], xs[j] : xs[j] + xn[j]]
            vals = block[ok]
            if len(vals) < 2:
                continue
            value, s, m = cell_statistic(vals, statistic, num_sigma_clip, num_iter, clip_sharpness)
            values[i, j] = value
            errors[i, j] = max(s, eps) / math.sqrt(m)
            valid[i, j] = True
    return {
        "y_centres": cell_centres(ys, yn),
        "x_centres": cell_centres(xs, xn),
        "values": values,
        "errors": errors,
        "valid": valid,
    }


def _weights(errors, valid, approx_weighting, eps):
    """Section 4 weights, normalised by their mean over valid cells."""
    w = np.zeros(errors.shape, dtype=np.float64)
    if not valid.any():
        return w
    use_inverse_variance = approx_weighting and bool(np.any(errors[valid] > eps))
    for idx in zip(*np.nonzero(valid), strict=True):
        w[idx] = 1.0 / errors[idx] ** 2 if use_inverse_variance else 1.0
    return w / np.mean(w[valid])


def _occupancy(valid):
    """``(mx, my)``: distinct cell columns / rows holding a valid cell."""
    mx = int(np.sum(valid.any(axis=0)))
    my = int(np.sum(valid.any(axis=1)))
    return mx, my


# --------------------------------------------------------------------------
# Section 6: solve
# --------------------------------------------------------------------------
def _solve(design, values, weights, valid, active, penalty_rows, lam_total, constant):
    """Weighted, penalised, ridge-guarded least squares over the active coefficients.

    Section 6: the weighted mean of the valid cells is taken out first and added
    back as the constant function (``constant``: its coefficient vector).
    """
    n_coef = design.shape[1]
    cells = np.flatnonzero(valid.ravel())
    w_cells = weights.ravel()[cells]
    offset = float(np.sum(w_cells * values.ravel()[cells]) / np.sum(w_cells))
    sw = np.sqrt(w_cells)
    a_data = sw[:, None] * design[cells][:, active]
    b_data = sw * (values.ravel()[cells] - offset)
    blocks = [a_data]
    rhs = [b_data]
    if lam_total > 0 and penalty_rows.shape[0] > 0:
        blocks.append(math.sqrt(lam_total) * penalty_rows[:, active])
        rhs.append(np.zeros(penalty_rows.shape[0]))
    eps = EPSILON_PER_VALID_CELL * len(cells)
    n_active = int(np.sum(active))
    blocks.append(math.sqrt(eps) * np.eye(n_active))
    rhs.append(np.zeros(n_active))
    a = np.vstack(blocks)
    b = np.concatenate(rhs)
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    coef = np.zeros(n_coef, dtype=np.float64)
    coef[active] = sol
    return coef + offset * np.asarray(constant, dtype=np.float64)


def _design(y_basis_cells, x_basis_cells):
    """Row-major design: row = cell ``(i, j)``, column = ``(p, q)``."""
    ny, ky = y_basis_cells.shape
    nx, kx = x_basis_cells.shape
    design = np.zeros((ny * nx, ky * kx), dtype=np.float64)
    for i in range(ny):
        for j in range(nx):
            design[i * nx + j, :] = np.outer(y_basis_cells[i], x_basis_cells[j]).ravel()
    return design


# --------------------------------------------------------------------------
# Section 8: diagnostics
# --------------------------------------------------------------------------
def _fit_rms(
    diff, usable, model, bin_size, statistic, num_sigma_clip, num_iter, clip_sharpness=None
):
    height, width = diff.shape
    residuals = []
    for y0 in range(0, height, bin_size):
        ysize = min(y0 + bin_size, height) - y0
        for x0 in range(0, width, bin_size):
            xsize = min(x0 + bin_size, width) - x0
            ok = usable[y0 : y0 + ysize, x0 : x0 + xsize]
            vals = diff[y0 : y0 + ysize, x0 : x0 + xsize][ok]
            if len(vals) < 2:
                continue
            z, _, _ = cell_statistic(vals, statistic, num_sigma_clip, num_iter, clip_sharpness)
            residuals.append(z - model[y0 + ysize // 2, x0 + xsize // 2])
    if not residuals:
        return math.nan
    return float(np.sqrt(np.mean(np.square(residuals))))


# --------------------------------------------------------------------------
# The whole algorithm
# --------------------------------------------------------------------------
def oracle_match(
    ref_image,
    ref_mask,
    ref_var,
    sci_image,
    sci_mask,
    sci_var,
    *,
    bad_bits_ref: int,
    bad_bits_sci: int,
    use_polynomial=False,
    order=8,
    order_y=None,
    chebyshev_terms="TOTAL",
    grid_statistic="MEAN",
    undersample_style="REDUCE_INTERP_ORDER",
    bin_size=256,
    interp_style="AKIMA_SPLINE",
    num_sigma_clip=3.0,
    num_iter=2,
    approx_weighting=True,
    grid_stdev_epsilon=1e-8,
    roughness=0.0,
    knot_spacing=1,
    clip_sharpness=None,
) -> dict:
    ref_image = np.asarray(ref_image, dtype=np.float64)
    sci_image = np.asarray(sci_image, dtype=np.float64)
    ref_var = np.asarray(ref_var, dtype=np.float64)
    sci_var = np.asarray(sci_var, dtype=np.float64)
    ref_mask = np.asarray(ref_mask).astype(np.int64)
    sci_mask = np.asarray(sci_mask).astype(np.int64)
    height, width = sci_image.shape
    bin_size = int(bin_size)
    eps = float(grid_stdev_epsilon)

    # Section 1.
    diff = ref_image - sci_image
    diff_var = ref_var + sci_var
    usable = (
        ((ref_mask & int(bad_bits_ref)) == 0)
        & ((sci_mask & int(bad_bits_sci)) == 0)
        & np.isfinite(diff)
    )
    usable_var = usable & np.isfinite(diff_var)

    def grid_for(b, n=None):
        g = _grid(diff, usable, b, grid_statistic, num_sigma_clip, num_iter, eps, clip_sharpness, n)
        g["weights"] = _weights(g["errors"], g["valid"], approx_weighting, eps)
        return g

    ys_pix = np.arange(height, dtype=np.float64)
    xs_pix = np.arange(width, dtype=np.float64)

    if use_polynomial:
        tensor = chebyshev_terms == "TENSOR"
        if chebyshev_terms not in ("TOTAL", "TENSOR"):
            raise ValueError(f"unknown chebyshev_terms {chebyshev_terms!r}")
        order_x = int(order)
        order_yy = int(order if (order_y is None or not tensor) else order_y)
        ky, kx = order_yy + 1, order_x + 1

        # Section 5, undersampling step 1 (eager).
        short = min(height, width)
        if short < bin_size:
            raise ValueError("short image side is smaller than binSize")
        if tensor:
            if order_x > -(-width // bin_size) - 1 or order_yy > -(-height // bin_size) - 1:
                raise ValueError("Chebyshev order too high for the grid")
        elif order_x > -(-short // bin_size) - 1:
            raise ValueError("Chebyshev order too high for the grid")

        def degrees():
            p, q = np.arange(ky)[:, None], np.arange(kx)[None, :]
            return np.maximum(p, q) if tensor else p + q

        def determined_degree(g, e_y, e_x):
            """Largest d: the valid cells' design restricted to the active terms of
            degree <= d has full column rank (SVD of the column-normalised matrix)."""
            yc = chebyshev_matrix(2.0 * (g["y_centres"] + 0.5) / height - 1.0, order_yy)
            xc = chebyshev_matrix(2.0 * (g["x_centres"] + 0.5) / width - 1.0, order_x)
            rows = np.einsum("ap,bq->abpq", yc, xc)[g["valid"]].reshape(-1, ky * kx)
            p, q = np.arange(ky)[:, None], np.arange(kx)[None, :]
            act = (p <= e_y) & (q <= e_x) if tensor else (p + q <= e_x)
            deg = degrees()
            for d in range(int(deg.max()), -1, -1):
                cols = (act & (deg <= d)).reshape(-1)
                a = rows[:, cols] / np.linalg.norm(rows[:, cols], axis=0)
                sv = np.linalg.svd(a, compute_uv=False)
                if a.shape[0] >= a.shape[1] and sv[-1] > 1e-11 * sv[0]:
                    return d
            return -1

        def undersampled(valid):
            mx, my = _occupancy(valid)
            if tensor:
                return mx <= order_x or my <= order_yy
            return min(mx, my) <= order_x

        def rank_undersampled(g):
            return determined_degree(g, order_yy, order_x) < int(degrees().max())

        grid = grid_for(bin_size)
        bin_used = bin_size
        eff_x, eff_y = order_x, order_yy
        status = STATUS_SUCCESS
        mx, my = _occupancy(grid["valid"])
        m = min(mx, my)
        if m == 0:
            status = STATUS_NO_OVERLAP
        elif undersampled(grid["valid"]) or rank_undersampled(grid):
            if undersample_style == "THROW_EXCEPTION":
                status = STATUS_UNDERSAMPLED
            elif undersample_style == "REDUCE_INTERP_ORDER":
                if tensor:
                    eff_x = min(order_x, mx - 1)
                    eff_y = min(order_yy, my - 1)
                else:
                    eff_x = eff_y = min(order_x, m - 1)
                # Then the rank rule: keep the degrees the valid cells determine.
                d = determined_degree(grid, eff_y, eff_x)
                eff_x, eff_y = min(eff_x, d), min(eff_y, d)
            elif undersample_style == "INCREASE_NXNYSAMPLE":
                # LSST hands this to afw's setNxSample/setNySample: a number of cells.
                n_cells = (m * bin_size) // (max(order_x, order_yy) + 1)
                if n_cells < 1 or n_cells > min(height, width):
                    status = STATUS_UNDERSAMPLED
                else:
                    grid = grid_for(bin_size, n_cells)
                    bin_used = max(
                        int(cell_edges(side, bin_size, n_cells)[1].max())
                        for side in (height, width)
                    )
                    if undersampled(grid["valid"]) or rank_undersampled(grid):
                        status = STATUS_UNDERSAMPLED
            else:
                raise ValueError(f"unknown undersample_style {undersample_style!r}")

        active2d = np.zeros((ky, kx), dtype=bool)
        for p in range(ky):
            for q in range(kx):
                if tensor:
                    active2d[p, q] = p <= eff_y and q <= eff_x
                else:
                    active2d[p, q] = p + q <= eff_x
        yc_t = 2.0 * (grid["y_centres"] + 0.5) / height - 1.0
        xc_t = 2.0 * (grid["x_centres"] + 0.5) / width - 1.0
        y_cells = chebyshev_matrix(yc_t, order_yy)
        x_cells = chebyshev_matrix(xc_t, order_x)
        y_pix = chebyshev_matrix(2.0 * (ys_pix + 0.5) / height - 1.0, order_yy)
        x_pix = chebyshev_matrix(2.0 * (xs_pix + 0.5) / width - 1.0, order_x)
        # Section 6: order-weighted ridge  sum (p + q)^2 C[p, q]^2.
        penalty = np.diag([float(p + q) for p in range(ky) for q in range(kx)])
        lam_total = float(roughness) + LAMBDA_FLOOR_CHEBYSHEV
        effective_order = (eff_y, eff_x)
        style_used = None
        akima = None
    else:
        if interp_style not in SPLINE_DEGREE:
            raise ValueError(f"unknown interp_style {interp_style!r}")
        grid = grid_for(bin_size)
        bin_used = bin_size
        y_knots = spline_knots(grid["y_centres"], knot_spacing)
        x_knots = spline_knots(grid["x_centres"], knot_spacing)
        ky, kx = len(y_knots), len(x_knots)
        style_used = interp_style
        if min(ky, kx) < SPLINE_MIN_KNOTS[interp_style]:
            if undersample_style == "REDUCE_INTERP_ORDER":
                fewest = min(ky, kx)
                allowed = [s for s in SPLINE_RANK if SPLINE_MIN_KNOTS[s] <= fewest]
                style_used = allowed[-1]
            else:
                raise ValueError("too few knots for the interpolation style")
        degree = SPLINE_DEGREE[style_used]
        akima = style_used == "AKIMA_SPLINE"
        status = STATUS_SUCCESS if grid["valid"].any() else STATUS_NO_OVERLAP
        active2d = np.ones((ky, kx), dtype=bool)
        y_cells = cardinal_basis(grid["y_centres"], y_knots, degree)
        x_cells = cardinal_basis(grid["x_centres"], x_knots, degree)
        y_pix = cardinal_basis(ys_pix, y_knots, degree)
        x_pix = cardinal_basis(xs_pix, x_knots, degree)
        diff_order = 1 if degree == 0 else 2
        dy = difference_matrix(ky, diff_order)
        dx = difference_matrix(kx, diff_order)
        # ||D_y C||_F^2 + ||C D_x^T||_F^2 on the row-major flattening of C.
        penalty = np.vstack([np.kron(dy, np.eye(kx)), np.kron(np.eye(ky), dx)])
        lam_total = float(roughness) + LAMBDA_FLOOR_SPLINE
        effective_order = None

    result = {
        "cell_values": grid["values"],
        "cell_errors": grid["errors"],
        "cell_weights": grid["weights"],
        "effective_order": effective_order,
        "interp_style_used": style_used,
        "bin_size_used": bin_used,
    }

    def failed(code):
        result.update(
            status=code,
            coefficients=np.full((ky, kx), np.nan),
            model=np.full((height, width), np.nan),
            matched=sci_image.copy(),
            fit_rms=math.nan,
            matched_mse=math.nan,
            diff_im_var=math.nan,
        )
        return result

    if status != STATUS_SUCCESS:
        return failed(status)

    design = _design(y_cells, x_cells)
    coef = _solve(
        design,
        grid["values"],
        grid["weights"],
        grid["valid"],
        active2d.ravel(),
        penalty,
        lam_total,
        constant=(np.eye(ky * kx)[0] if use_polynomial else np.ones(ky * kx)),
    )
    coefficients = coef.reshape(ky, kx)

    # Section 7.
    if akima:
        along_y = Akima1DInterpolator(
            y_knots, coefficients, axis=0, method="akima", extrapolate=True
        )(ys_pix)
        model = Akima1DInterpolator(x_knots, along_y, axis=1, method="akima", extrapolate=True)(
            xs_pix
        )
    else:
        model = y_pix @ coefficients @ x_pix.T

    if not (np.all(np.isfinite(coefficients)) and np.all(np.isfinite(model))):
        return failed(STATUS_NONFINITE)

    # Section 8 (fitRMS on the configured binSize; see the module docstring).
    fit_rms = _fit_rms(
        diff, usable, model, bin_size, grid_statistic, num_sigma_clip, num_iter, clip_sharpness
    )
    resid = (diff - model)[usable]
    matched_mse = float(np.mean(resid**2)) if resid.size else math.nan
    diff_im_var, _, _ = cell_statistic(diff_var[usable_var], "MEANCLIP", num_sigma_clip, num_iter)

    result.update(
        status=STATUS_SUCCESS,
        coefficients=coefficients,
        model=model,
        matched=sci_image + model,
        fit_rms=fit_rms,
        matched_mse=matched_mse,
        diff_im_var=float(diff_im_var),
    )
    return result
