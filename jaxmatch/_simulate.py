"""A seeded simulator of one sky patch seen in several exposures (NumPy only).

This is the library's built-in demo data and the test suite's ground truth.
Every exposure is

    image_i(y, x) = s_i · scene(y, x) + B_i(y, x) + n_i(y, x),
    n_i ~ Normal(0, V_i),   V_i = (s_i · scene + B_i) / gain + read_noise²,

on one common pixel grid (as if already warped), followed by the defects a
real warp carries: saturation, cosmic rays, bad columns, missing coverage and
a flagged border.  `scene` is the noiseless PSF-convolved sky, `s_i` a flux
scale (transparency / exposure time) and `B_i` a smooth sky background that
differs from exposure to exposure — the thing background matching recovers.

Units: pixel values in [ADU], variances in [ADU²], lengths in [pixels],
`gain` in [e⁻/ADU], `read_noise` in [ADU].
"""

import dataclasses
import math

import numpy as np

from ._exposure import DEFAULT_MASK_PLANES

__all__ = ["MASK_PLANES", "SimulatedPatch", "simulate_patch"]

# LSST mask plane names → bit index (spec, "Data"); one table for the package.
MASK_PLANES = DEFAULT_MASK_PLANES

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_AREA_UNIT = 256 * 256  # default source counts are given per 256×256 pixels
_STARS_PER_UNIT = 30
_GALAXIES_PER_UNIT = 40
_EDGE_WIDTH = 2  # [pixels] flagged EDGE around the border
_DETECT_NSIGMA = 2.0  # DETECTED where s·scene > 2 σ(pixel) ...
_DETECT_GROW = 2  # ... grown by this many pixels (a 5×5 square)
_SAT_REFERENCE = 6.0e4  # [ADU] saturation used to size bright stars when saturation=None


def _bit(name: str) -> np.int32:
    return np.int32(1 << MASK_PLANES[name])


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value
class SimulatedPatch:
    """N exposures of one simulated patch, with the truth they were made from.

    Attributes:
        images: `(N, H, W)` float64 observed pixels [ADU]; NaN where NO_DATA.
        masks: `(N, H, W)` int32 bit planes, bit `1 << mask_planes[name]`.
        variances: `(N, H, W)` float64 per-pixel variance [ADU²]; `inf` where
            NO_DATA.
        backgrounds: `(N, H, W)` float64 true smooth sky background `B_i`
            [ADU], finite everywhere (also under NO_DATA).
        scene: `(H, W)` float64 noiseless PSF-convolved sources before
            scaling [ADU], ≥ 0.
        scales: `(N,)` float64 flux scale `s_i` of each exposure.
        mask_planes: name → bit index (a copy of `MASK_PLANES`).
    """

    images: np.ndarray
    masks: np.ndarray
    variances: np.ndarray
    backgrounds: np.ndarray
    scene: np.ndarray
    scales: np.ndarray
    mask_planes: dict


# ----------------------------------------------------------------------------- scene


def _fast_len(n: int) -> int:
    """Smallest 2·3·5-smooth integer ≥ n (FFT sizes that pocketfft does fast)."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _power_law(rng, n: int, lo: float, hi: float, index: float) -> np.ndarray:
    """Fluxes with cumulative counts N(>F) ∝ F^-index on [lo, hi] (inverse CDF)."""
    u = rng.uniform(size=n)
    return lo * (1.0 - u * (1.0 - (lo / hi) ** index)) ** (-1.0 / index)


def _positions(rng, n_inside: int, box, region):
    """`n_inside` positions uniform in `box`, plus Poisson-many in `region` \\ `box`
    at the same density (so sources cut by the image edge exist too).

    Boxes are `(y0, y1, x0, x1)` in canvas coordinates; returns `(y, x)`.
    """
    by0, by1, bx0, bx1 = box
    ry0, ry1, rx0, rx1 = region
    y = rng.uniform(by0, by1, n_inside)
    x = rng.uniform(bx0, bx1, n_inside)
    density = n_inside / ((by1 - by0) * (bx1 - bx0))
    n_cand = rng.poisson(density * (ry1 - ry0) * (rx1 - rx0))
    cy = rng.uniform(ry0, ry1, n_cand)
    cx = rng.uniform(rx0, rx1, n_cand)
    outside = (cy < by0) | (cy >= by1) | (cx < bx0) | (cx >= bx1)
    return np.concatenate([y, cy[outside]]), np.concatenate([x, cx[outside]])


def _render_stars(canvas, y, x, flux, sigma: float, radius: int) -> None:
    """Add pixel-integrated Gaussian PSFs centred at `(y, x)` to `canvas` in place.

    The Gaussian is separable, so each star is the outer product of two 1-D
    profiles, each averaged over 8 sub-samples per pixel (pixel integration).
    """
    if len(flux) == 0:
        return
    offs = np.arange(-radius, radius + 1)
    sub = (np.arange(8) + 0.5) / 8.0 - 0.5

    def profile(c):
        ic = np.rint(c).astype(np.int64)
        t = (ic - c)[:, None, None] + offs[None, :, None] + sub[None, None, :]
        g = np.exp(-0.5 * (t / sigma) ** 2).mean(axis=-1) / (math.sqrt(2 * math.pi) * sigma)
        return ic[:, None] + offs[None, :], g

    rows, gy = profile(y)
    cols, gx = profile(x)
    hc, wc = canvas.shape
    flat = rows[:, :, None] * wc + cols[:, None, :]
    vals = flux[:, None, None] * gy[:, :, None] * gx[:, None, :]
    # bincount: a fast scatter-add for overlapping stamps
    canvas += np.bincount(flat.ravel(), vals.ravel(), minlength=hc * wc).reshape(hc, wc)


def _sersic_b(n):
    """b_n with Γ(2n) = 2γ(2n, b_n): half the light inside r_e (Ciotti & Bertin 1999)."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def _render_galaxy(canvas, y0, x0, flux, r_e, n, q, theta, max_radius=96) -> None:
    """Add one elliptical Sérsic profile (before PSF) to `canvas` in place.

    `I(r) ∝ exp(-b_n (r / r_e)^(1/n))`, `r² = u² + (v / q)²` in axes rotated by
    `theta`; truncated where `I < 1e-5 I(0)`, pixel-averaged over `os²`
    sub-samples (more for small galaxies, whose cores are steep) and
    normalised so the stamp sums to `flux`.
    """
    b = _sersic_b(n)
    radius = int(min(math.ceil(r_e * (math.log(1e5) / b) ** n) + 1, max_radius))
    os = int(min(max(math.ceil(6.0 / r_e), 1), 5))
    iy, ix = round(y0), round(x0)
    t = (np.arange(-radius * os, (radius + 1) * os) + 0.5) / os - 0.5  # sub-pixel grid
    dy = (iy - y0 + t)[:, None]
    dx = (ix - x0 + t)[None, :]
    c, s = math.cos(theta), math.sin(theta)
    u = dx * c + dy * s
    v = (-dx * s + dy * c) / q
    prof = np.exp(-b * (np.hypot(u, v) / r_e) ** (1.0 / n))
    side = 2 * radius + 1
    stamp = prof.reshape(side, os, side, os).sum(axis=(1, 3))
    stamp *= flux / stamp.sum()
    hc, wc = canvas.shape
    ya, xa = iy - radius, ix - radius
    y1, y2 = max(ya, 0), min(ya + side, hc)
    x1, x2 = max(xa, 0), min(xa + side, wc)
    if y1 < y2 and x1 < x2:  # clip the stamp to the canvas
        canvas[y1:y2, x1:x2] += stamp[y1 - ya : y2 - ya, x1 - xa : x2 - xa]


def _make_scene(
    rng, shape, n_stars, n_galaxies, sigma_psf, sky_sigma, f_sat, galaxy_size=1.0, faint=1.0
):
    """The noiseless PSF-convolved scene `(H, W)` [ADU] (see `simulate_patch`)."""
    h, w = shape
    r_star = int(math.ceil(4.0 * _FWHM_PER_SIGMA * sigma_psf))  # PSF stamp radius
    margin = 2 * r_star + 2  # > PSF radius: FFT wrap-around stays out of the image
    hc, wc = _fast_len(h + 2 * margin), _fast_len(w + 2 * margin)
    image_box = (margin, margin + h, margin, margin + w)
    f_lim = 5.0 * sky_sigma * math.sqrt(4.0 * math.pi) * sigma_psf  # 5σ point source

    # Galaxies: drawn before the PSF, then convolved with it by FFT.
    max_radius = round(96 * max(galaxy_size, 1.0))
    canvas = np.zeros((hc, wc))
    gy, gx = _positions(rng, n_galaxies, image_box, (0, hc, 0, wc))
    ng = len(gy)
    g_flux = _power_law(rng, ng, faint * f_lim, 300.0 * f_lim, 1.0)
    r_e = np.clip(1.2 * (g_flux / f_lim) ** 0.3 * rng.lognormal(0.0, 0.3, ng), 0.5, 25.0)
    r_e = r_e * galaxy_size
    disk = rng.uniform(size=ng) < 0.7
    sersic_n = np.where(disk, rng.uniform(0.6, 1.5, ng), rng.uniform(2.0, 3.5, ng))
    q = rng.uniform(0.3, 1.0, ng)
    theta = rng.uniform(0.0, math.pi, ng)
    for i in range(ng):
        _render_galaxy(
            canvas, gy[i], gx[i], g_flux[i], r_e[i], sersic_n[i], q[i], theta[i], max_radius
        )
    if ng:
        ky = np.fft.fftfreq(hc)[:, None]
        kx = np.fft.rfftfreq(wc)[None, :]
        # Gaussian PSF applied as its analytic transfer function exp(-2π²σ²|k|²)
        transfer = np.exp(-2.0 * math.pi**2 * sigma_psf**2 * (ky**2 + kx**2))
        canvas = np.fft.irfft2(np.fft.rfft2(canvas) * transfer, s=(hc, wc))
        np.maximum(canvas, 0.0, out=canvas)  # FFT round-off leaves ±1e-13 ripples

    # Stars: already PSF-shaped, rendered analytically at sub-pixel positions.
    n_bright = -(-n_stars // 50)  # ≥ 1 star above saturation per 50 (when any)
    fits = h > 2 * r_star + 4 and w > 2 * r_star + 4
    pad = r_star + 2 if fits else 0
    by, bx = (
        rng.uniform(margin + pad, margin + h - pad, n_bright),
        rng.uniform(margin + pad, margin + w - pad, n_bright),
    )
    reach = (margin - r_star, margin + h + r_star, margin - r_star, margin + w + r_star)
    sy, sx = _positions(rng, n_stars - n_bright, image_box, reach)
    s_flux = _power_law(rng, len(sy), f_lim, 10.0 * f_sat, 0.75)
    b_flux = f_sat * np.exp(rng.uniform(math.log(2.0), math.log(20.0), n_bright))
    _render_stars(
        canvas,
        np.concatenate([by, sy]),
        np.concatenate([bx, sx]),
        np.concatenate([b_flux, s_flux]),
        sigma_psf,
        r_star,
    )
    return np.ascontiguousarray(canvas[margin : margin + h, margin : margin + w])


# ----------------------------------------------------------------------------- exposures


def _legendre(t):
    """Legendre polynomials P_0..P_3 at `t` ∈ [-1, 1], stacked on the last axis."""
    return np.stack([np.ones_like(t), t, 1.5 * t * t - 0.5, 2.5 * t**3 - 1.5 * t], axis=-1)


def _background(rng, shape, sky_level, amplitude):
    """One smooth sky background `(H, W)` [ADU].

    `B = sky_level (1 + δ) + A · S / ptp(S)` with `δ ~ N(0, 0.02²)` and
    `S = Σ_{1 ≤ i+j ≤ 3} c_ij P_i(ỹ) P_j(x̃)` (tilted plane + Legendre
    structure, `c_ij ~ N(0, 1/(i+j)²)`) plus, half of the time, a broad
    Gaussian bump (σ = 20–40 % of the side); `S` has zero mean and its
    peak-to-peak range is exactly `A = background_amplitude`.
    """
    h, w = shape
    # pixel centres mapped to [-1, 1] over the bounding box (as in spec step 6)
    ty = (2.0 * np.arange(h) + 1.0) / h - 1.0
    tx = (2.0 * np.arange(w) + 1.0) / w - 1.0
    py, px = _legendre(ty), _legendre(tx)
    ij = [(i, j) for i in range(4) for j in range(4) if 1 <= i + j <= 3]
    coef = rng.normal(size=len(ij)) / np.array([i + j for i, j in ij], dtype=float)
    cols_y = [py[:, i] * c for (i, _), c in zip(ij, coef, strict=True)]
    cols_x = [px[:, j] for _, j in ij]
    if rng.uniform() < 0.5:
        amp, cy, cx = rng.normal(), rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.7)
        width = rng.uniform(0.4, 0.8)
        cols_y.append(amp * np.exp(-0.5 * ((ty - cy) / width) ** 2))
        cols_x.append(np.exp(-0.5 * ((tx - cx) / width) ** 2))
    # every term is separable, so S is one (H, K) @ (K, W) product
    structure = np.stack(cols_y, axis=1) @ np.stack(cols_x, axis=0)
    structure -= structure.mean()
    ptp = np.ptp(structure)
    if ptp > 0:
        structure *= amplitude / ptp
    return sky_level * (1.0 + 0.02 * rng.normal()) + structure


def _grow(mask, r: int):
    """Binary dilation of a 2-D bool mask by a (2r+1)² square (separable max)."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        n = src.shape[axis]
        for k in range(1, min(r, n - 1) + 1):
            lo = [slice(None)] * 2
            hi = [slice(None)] * 2
            lo[axis], hi[axis] = slice(0, n - k), slice(k, n)
            out[tuple(lo)] |= src[tuple(hi)]
            out[tuple(hi)] |= src[tuple(lo)]
    return out


def _cosmic_rays(rng, image, mask, sky_sigma):
    """Add `1 + Poisson(6 · area / 256²)` short straight tracks (0–12 px long,
    `20–200 σ_sky` [ADU] per pixel) to `image`, flagged CR, in place."""
    h, w = image.shape
    for _ in range(1 + rng.poisson(6.0 * h * w / _AREA_UNIT)):
        y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
        length, angle = rng.uniform(0.0, 12.0), rng.uniform(0.0, 2.0 * math.pi)
        t = np.linspace(0.0, length, int(4 * length) + 1)
        yy = np.floor(y0 + t * math.sin(angle)).astype(np.int64)
        xx = np.floor(x0 + t * math.cos(angle)).astype(np.int64)
        keep = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        flat = np.unique(yy[keep] * w + xx[keep])
        energy = sky_sigma * math.exp(rng.uniform(math.log(20.0), math.log(200.0)))
        image.flat[flat] += energy * rng.uniform(0.5, 1.5, len(flat))
        mask.flat[flat] |= _bit("CR")


def _bad_columns(rng, image, mask, background, read_noise, sky_sigma):
    """Overwrite 1–2 column segments (≥ 30 % of the height, running to the
    top or bottom) with garbage, flagged BAD, in place: dead (read noise
    around 0), hot (background + 10–100 σ_sky) or uniform junk in
    [0, 2 · max(background)] [ADU]."""
    h, w = image.shape
    for _ in range(rng.integers(1, 3)):
        x = rng.integers(0, w)
        length = max(1, round(h * rng.uniform(0.3, 1.0)))
        rows = slice(0, length) if rng.uniform() < 0.5 else slice(h - length, h)
        kind = rng.integers(3)
        if kind == 0:
            junk = read_noise * rng.normal(size=length)
        elif kind == 1:
            junk = background[rows, x] + sky_sigma * (
                rng.uniform(10.0, 100.0) + 3.0 * rng.normal(size=length)
            )
        else:
            junk = rng.uniform(0.0, 2.0 * background.max(), length)
        image[rows, x] = junk
        mask[rows, x] |= _bit("BAD")


def _no_data_region(rng, shape):
    """A bool `(H, W)` region with no coverage: a strip along one side or a
    rectangle in one corner, 5–30 % of the area."""
    h, w = shape
    frac = rng.uniform(0.05, 0.30)
    region = np.zeros(shape, dtype=bool)
    if rng.uniform() < 0.5:  # strip
        side = rng.integers(4)
        if side < 2:
            k = max(1, round(frac * h))
            region[:k] = True
        else:
            k = max(1, round(frac * w))
            region[:, :k] = True
        if side % 2:
            region = region[::-1, ::-1]
    else:  # corner, aspect ratio 1:2 … 2:1
        aspect = math.exp(rng.uniform(-math.log(2.0), math.log(2.0)))
        cw = min(w, max(1, round(math.sqrt(frac * h * w * aspect))))
        ch = min(h, max(1, round(frac * h * w / cw)))
        region[:ch, :cw] = True
        if rng.uniform() < 0.5:
            region = region[::-1]
        if rng.uniform() < 0.5:
            region = region[:, ::-1]
    return np.ascontiguousarray(region)


# ----------------------------------------------------------------------------- entry point


def _check_count(name, value):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be None or an integer ≥ 0, got {value!r}")


def _check_positive(name, value, *, allow_zero=False):
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")


def simulate_patch(
    n_exposures: int = 4,
    shape: tuple[int, int] = (256, 256),
    *,
    seed: int | tuple[int, ...] = 0,
    n_stars: int | None = None,
    n_galaxies: int | None = None,
    sky_level: float = 1000.0,
    gain: float = 2.0,
    read_noise: float = 5.0,
    background_amplitude: float = 20.0,
    scale_scatter: float = 0.05,
    coverage: str = "partial",
    cosmic_rays: bool = True,
    bad_columns: bool = True,
    saturation: float | None = 6.0e4,
    psf_fwhm: float = 3.0,
    galaxy_size: float = 1.0,
    galaxy_faint_limit: float = 1.0,
) -> SimulatedPatch:
    """Simulate `n_exposures` warped exposures of one patch of sky.

    Model, for exposure `i` and pixel `(y, x)`:

        image_i = s_i · scene + B_i + n_i,   n_i ~ N(0, V_i),
        V_i     = max(s_i · scene + B_i, 0) / gain + read_noise²      [ADU²]

    **Scene** (shared by all exposures, drawn first, so it does not depend on
    `n_exposures` or on any per-exposure option):

    - *Stars*: point sources, the PSF integrated over each pixel at sub-pixel
      positions. Fluxes [ADU] follow `N(>F) ∝ F^-0.75` from the 5σ point-source
      limit `F_lim = 5 σ_sky √(4π) σ_psf` (σ_sky² = sky_level/gain +
      read_noise²) to `10 F_sat`, where `F_sat = 2π σ_psf² · max(saturation −
      sky_level, 10 σ_sky)` puts the peak near saturation (6e4 ADU stands in
      when `saturation` is None). One star in 50 (at least one
      when `n_stars > 0`) is bright, `2–20 F_sat`, and lies inside the image,
      so saturated stars always occur when `saturation` is reachable.
    - *Galaxies*: elliptical Sérsic profiles `I ∝ exp(-b_n (r/r_e)^(1/n))`,
      70 % discs (`n` 0.6–1.5) and 30 % spheroids (`n` 2–3.5), axis ratio
      0.3–1, random position angle; fluxes `N(>F) ∝ F^-1` on `[F_lim, 300
      F_lim]`, half-light radius `r_e ≈ 1.2 (F/F_lim)^0.3` [pixels] with 0.3
      log-normal scatter. They are convolved with the PSF by FFT on a canvas
      padded by more than the PSF radius on every side (no wrap-around).
      *Deep fields*: `galaxy_size` multiplies every half-light radius (stamps
      reach `96 · max(galaxy_size, 1)` pixels) and `galaxy_faint_limit` moves
      the faint end of the flux law to `galaxy_faint_limit · F_lim` (below 1:
      many galaxies fainter than the detection limit, whose light is never
      masked); with a larger `n_galaxies` this gives the extended, crowded
      outskirts of deep coadds. The defaults (1, 1) give the standard scenes.
    - *PSF*: circular Gaussian of FWHM `psf_fwhm` [pixels], the same in every
      exposure (so that `scene` is one array).
    - Sources are also placed in a margin around the image at the same
      density, so objects cut by the edge appear. `n_stars` / `n_galaxies`
      count the sources centred inside the image; by default 30 stars and 40
      galaxies per 256×256 pixels, scaled with the area.

    **Per exposure** (each from its own stream spawned from the seed):

    - *Scale* `s_i = exp(scale_scatter · z)`, `z ~ N(0, 1)`.
    - *Background* `B_i = sky_level (1 + δ_i) + S_i`, `δ_i ~ N(0, 0.02²)`;
      `S_i` is a tilted plane plus Legendre terms `P_k(ỹ) P_l(x̃)` with
      `k + l ≤ 3` and, in half the exposures, a broad Gaussian bump (σ =
      20–40 % of the side), rescaled to zero mean and a peak-to-peak range of
      exactly `background_amplitude` [ADU]. `x̃, ỹ ∈ [-1, 1]` over the image.
    - *Noise*: Gaussian with the variance plane above (the exact model
      variance, not one estimated from the noisy pixels).
    - *Masks* (bits of `MASK_PLANES`):
      `DETECTED` where `s_i · scene > 2 √V_i`, grown by 2 pixels (5×5 square);
      `CR`: `1 + Poisson(6 · area/256²)` straight tracks 0–12 pixels long,
      adding `20–200 σ_sky` per pixel (if `cosmic_rays`);
      `BAD`: 1–2 column segments (≥ 30 % of the height) of garbage — dead,
      hot or random (if `bad_columns`);
      `SAT` + `DETECTED`: pixels above `saturation` [ADU] (after noise, cosmic
      rays and bad columns) are clipped to it (if `saturation` is not None);
      `EDGE`: the 2-pixel border (its pixels hold ordinary data);
      `NO_DATA` (if `coverage="partial"`): exposure 1 and, with probability
      1/2, each later exposure (never exposure 0) lose a strip along one side
      or a rectangle in one corner covering 5–30 % of the area; there the
      image is NaN, the variance `inf`, and the mask holds only `NO_DATA`.
      `coverage="full"` gives identical arrays without that region.
      `INTRP`, `DETECTED_NEGATIVE` and `SUSPECT` are never set.

    Everything comes from `np.random.default_rng(seed)`: equal arguments give
    identical arrays, and exposure `i` does not depend on `n_exposures`.

    Args:
        n_exposures: number of exposures `N` ≥ 1.
        shape: `(H, W)` [pixels], each ≥ 8.
        seed: anything `np.random.default_rng` accepts.
        n_stars, n_galaxies: sources centred in the image; None → scale the
            defaults with `H·W`.
        sky_level: mean sky [ADU].
        gain: [e⁻/ADU], > 0.
        read_noise: [ADU], ≥ 0.
        background_amplitude: peak-to-peak range of the background structure
            [ADU], ≥ 0.
        scale_scatter: log-normal scatter of the flux scales, ≥ 0.
        coverage: `"partial"` or `"full"`.
        cosmic_rays, bad_columns: add those defects.
        saturation: clipping level [ADU], or None for no saturation.
        psf_fwhm: PSF full width at half maximum [pixels], ≥ 1.
        galaxy_size: multiplier of the galaxies' half-light radii, > 0.
        galaxy_faint_limit: faintest galaxy flux in units of `F_lim`, in (0, 300).

    Returns:
        A `SimulatedPatch` (float64 arrays, int32 masks).
    """
    if isinstance(n_exposures, bool) or not isinstance(n_exposures, int | np.integer):
        raise ValueError(f"n_exposures must be an integer ≥ 1, got {n_exposures!r}")
    if n_exposures < 1:
        raise ValueError(f"n_exposures must be ≥ 1, got {n_exposures}")
    if len(shape) != 2 or any(int(s) != s or s < 8 for s in shape):
        raise ValueError(f"shape must be (H, W) with integers ≥ 8, got {shape!r}")
    shape = (int(shape[0]), int(shape[1]))
    _check_count("n_stars", n_stars)
    _check_count("n_galaxies", n_galaxies)
    if not math.isfinite(sky_level):
        raise ValueError(f"sky_level must be finite, got {sky_level!r}")
    _check_positive("gain", gain)
    _check_positive("read_noise", read_noise, allow_zero=True)
    _check_positive("background_amplitude", background_amplitude, allow_zero=True)
    _check_positive("scale_scatter", scale_scatter, allow_zero=True)
    if coverage not in ("partial", "full"):
        raise ValueError(f"coverage must be 'partial' or 'full', got {coverage!r}")
    if saturation is not None:
        _check_positive("saturation", saturation)
    if not (math.isfinite(psf_fwhm) and psf_fwhm >= 1.0):
        raise ValueError(f"psf_fwhm must be ≥ 1 pixel (no undersampled PSFs), got {psf_fwhm!r}")

    _check_positive("galaxy_size", galaxy_size)
    _check_positive("galaxy_faint_limit", galaxy_faint_limit)
    if galaxy_faint_limit >= 300.0:
        raise ValueError(f"galaxy_faint_limit must be < 300, got {galaxy_faint_limit!r}")

    h, w = shape
    area = h * w / _AREA_UNIT
    n_stars = round(_STARS_PER_UNIT * area) if n_stars is None else int(n_stars)
    n_galaxies = round(_GALAXIES_PER_UNIT * area) if n_galaxies is None else int(n_galaxies)
    sigma_psf = psf_fwhm / _FWHM_PER_SIGMA
    sky_sigma = math.sqrt(max(sky_level, 0.0) / gain + read_noise**2)
    if sky_sigma == 0.0:
        raise ValueError("sky_level ≤ 0 with read_noise = 0 leaves the sky noiseless")
    sat_ref = _SAT_REFERENCE if saturation is None else saturation
    f_sat = 2.0 * math.pi * sigma_psf**2 * max(sat_ref - sky_level, 10.0 * sky_sigma)

    scene_rng, *exposure_rngs = np.random.default_rng(seed).spawn(1 + n_exposures)
    scene = _make_scene(
        scene_rng,
        shape,
        n_stars,
        n_galaxies,
        sigma_psf,
        sky_sigma,
        f_sat,
        galaxy_size,
        galaxy_faint_limit,
    )

    images = np.empty((n_exposures, h, w))
    variances = np.empty((n_exposures, h, w))
    backgrounds = np.empty((n_exposures, h, w))
    masks = np.zeros((n_exposures, h, w), dtype=np.int32)
    scales = np.empty(n_exposures)
    border = np.ones(shape, dtype=bool)
    border[_EDGE_WIDTH:-_EDGE_WIDTH, _EDGE_WIDTH:-_EDGE_WIDTH] = False
    for i, rng in enumerate(exposure_rngs):
        scales[i] = math.exp(scale_scatter * rng.normal())
        backgrounds[i] = _background(rng, shape, sky_level, background_amplitude)
        signal = scales[i] * scene
        model = signal + backgrounds[i]
        var = np.maximum(model, 0.0) / gain + read_noise**2
        if not np.all(var > 0.0):
            raise ValueError("the background goes ≤ 0 where read_noise = 0: raise sky_level")
        image = model + np.sqrt(var) * rng.standard_normal(shape)
        mask = masks[i]
        mask[border] |= _bit("EDGE")
        mask[_grow(signal > _DETECT_NSIGMA * np.sqrt(var), _DETECT_GROW)] |= _bit("DETECTED")
        if cosmic_rays:
            _cosmic_rays(rng, image, mask, sky_sigma)
        if bad_columns:
            _bad_columns(rng, image, mask, backgrounds[i], read_noise, sky_sigma)
        if saturation is not None:
            sat = image > saturation
            image[sat] = saturation
            mask[sat] |= _bit("SAT") | _bit("DETECTED")
        # drawn last, so coverage="full" leaves every other array unchanged
        if i >= 1 and (rng.uniform() < 0.5 or i == 1) and coverage == "partial":
            hole = _no_data_region(rng, shape)
            image[hole] = np.nan
            var[hole] = np.inf
            mask[hole] = _bit("NO_DATA")
        images[i] = image
        variances[i] = var
    return SimulatedPatch(
        images=images,
        masks=masks,
        variances=variances,
        backgrounds=backgrounds,
        scene=scene,
        scales=scales,
        mask_planes=dict(MASK_PLANES),
    )
