"""Benchmark inputs: one reference and N science exposures of one patch.

Two sources, with the same structure (smooth sky background that differs per
exposure + noise + sources masked DETECTED + cosmic rays + a NO_DATA region
that is NaN in the image and inf in the variance):

- ``jaxmatch.simulate_patch`` (the library's simulator: PSF-convolved stars and
  galaxies, saturation, bad columns, ...) for sides up to ``sim_max_side``;
- `synthetic_patch` above that (the simulator renders every source and needs
  ~20 s for two 4096² exposures; this one is vectorised NumPy in the target
  dtype).

Only ``n_unique = min(N, 4)`` science exposures are generated; exposure ``i``
of the batch is a copy of unique exposure ``i % n_unique`` (every exposure has
its own memory, so nothing is cached between them; the timing does not depend
on the pixel values being different).

The arrays are handed to JAX once (`Case.jax_exposures`) and the NumPy code reads
them through zero-copy views (`np.asarray` of a CPU array), so the inputs sit in
memory once.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

import jaxmatch

MASK_PLANES = jaxmatch.DEFAULT_MASK_PLANES
N_UNIQUE = 4


@dataclasses.dataclass
class Case:
    """Inputs of one benchmark case (NumPy arrays, dtype ``dtype``, masks int32)."""

    ref_image: np.ndarray  # (H, W)
    ref_mask: np.ndarray
    ref_var: np.ndarray
    sci_image: np.ndarray  # (N, H, W)
    sci_mask: np.ndarray
    sci_var: np.ndarray
    truth: np.ndarray  # (n_unique, H, W) float32: B_ref - B_sci of each unique exposure
    source: str  # "simulate_patch" or "synthetic"
    _jax: tuple | None = None

    @property
    def n(self) -> int:
        return self.sci_image.shape[0]

    def jax_exposures(self):
        """``(reference, science)`` as `jaxmatch.Exposure`; the NumPy fields become views."""
        if self._jax is None:
            ref = jaxmatch.Exposure(
                jnp.asarray(self.ref_image), jnp.asarray(self.ref_mask), jnp.asarray(self.ref_var)
            )
            sci = jaxmatch.Exposure(
                jnp.asarray(self.sci_image), jnp.asarray(self.sci_mask), jnp.asarray(self.sci_var)
            )
            self._jax = (ref, sci)
            # Share the buffers: the NumPy methods read the very arrays JAX holds.
            self.ref_image, self.ref_mask, self.ref_var = (
                np.asarray(ref.image),
                np.asarray(ref.mask),
                np.asarray(ref.variance),
            )
            self.sci_image, self.sci_mask, self.sci_var = (
                np.asarray(sci.image),
                np.asarray(sci.mask),
                np.asarray(sci.variance),
            )
        return self._jax

    def truth_of(self, i: int) -> np.ndarray:
        return self.truth[i % self.truth.shape[0]]


def make_case(n: int, side: int, dtype, *, seed: int = 0, sim_max_side: int = 2048) -> Case:
    """N science exposures and a reference, ``side × side``, in ``dtype``."""
    dtype = np.dtype(dtype)
    n_unique = min(n, N_UNIQUE)
    if side <= sim_max_side:
        p = jaxmatch.simulate_patch(n_unique + 1, (side, side), seed=seed)
        images, masks, variances = p.images, p.masks, p.variances
        truth = (p.backgrounds[0][None] - p.backgrounds[1:]).astype(np.float32)
        source = "simulate_patch"
    else:
        images, masks, variances, backgrounds = synthetic_patch(
            n_unique + 1, side, dtype, seed=seed
        )
        truth = (backgrounds[0][None] - backgrounds[1:]).astype(np.float32)
        source = "synthetic"
    idx = 1 + np.arange(n) % n_unique
    sci_image = np.empty((n, side, side), dtype)
    sci_var = np.empty((n, side, side), dtype)
    sci_mask = np.empty((n, side, side), np.int32)
    for j, i in enumerate(idx):  # filled one by one: no (N, H, W) float64 temporary
        sci_image[j] = images[i]
        sci_var[j] = variances[i]
        sci_mask[j] = masks[i]
    return Case(
        ref_image=np.ascontiguousarray(images[0], dtype),
        ref_mask=np.ascontiguousarray(masks[0], np.int32),
        ref_var=np.ascontiguousarray(variances[0], dtype),
        sci_image=sci_image,
        sci_mask=sci_mask,
        sci_var=sci_var,
        truth=truth,
        source=source,
    )


def _bit(name):
    return np.int32(1 << MASK_PLANES[name])


def synthetic_patch(
    n: int,
    side: int,
    dtype,
    *,
    seed: int = 0,
    sky: float = 1000.0,
    amplitude: float = 20.0,
    gain: float = 2.0,
    read_noise: float = 5.0,
):
    """``n`` exposures with the structure of `simulate_patch`, built fast in ``dtype``.

    Background ``B_i = sky (1 + δ_i) + S_i``: a tilted plane, ``P_k(ỹ) P_l(x̃)``
    with ``k + l ≤ 3`` and a broad Gaussian bump, scaled to ``amplitude`` ADU peak
    to peak. Sources: ~2 % of the area in square blobs of +50–2000 ADU marked
    DETECTED (grown by 2 pixels); ~20 cosmic-ray pixels per 256² marked CR;
    exposure 1 (and every other later one) loses a strip on one side (NO_DATA:
    image NaN, variance inf); a 2-pixel EDGE border. Noise: Gaussian with a
    constant variance ``sky / gain + read_noise²``.

    Returns ``images, masks, variances, backgrounds``, each ``(n, side, side)``.
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    t = np.linspace(-1.0, 1.0, side, dtype=dtype)
    legendre = [np.ones_like(t), t, 1.5 * t * t - 0.5, 2.5 * t**3 - 1.5 * t]
    var0 = sky / gain + read_noise**2
    sigma = np.sqrt(var0)
    # A common source field (the same sky in every exposure).
    n_src = max(1, int(0.02 * side * side / 36))
    yy = rng.integers(0, side - 6, n_src)
    xx = rng.integers(0, side - 6, n_src)
    flux = rng.uniform(50.0, 2000.0, n_src).astype(dtype)
    scene = np.zeros((side, side), dtype)
    detected = np.zeros((side, side), bool)
    for dy in range(6):
        for dx in range(6):
            scene[yy + dy, xx + dx] += flux
    for dy in range(-2, 8):
        for dx in range(-2, 8):
            detected[np.clip(yy + dy, 0, side - 1), np.clip(xx + dx, 0, side - 1)] = True
    images = np.empty((n, side, side), dtype)
    masks = np.zeros((n, side, side), np.int32)
    variances = np.empty((n, side, side), dtype)
    backgrounds = np.empty((n, side, side), np.float32)
    for i in range(n):
        c = rng.normal(size=(4, 4))
        structure = np.zeros((side, side), dtype)
        for k in range(4):
            for l in range(4 - k):
                structure += dtype.type(c[k, l]) * np.outer(legendre[k], legendre[l])
        if i % 2:
            y0, x0 = rng.uniform(-0.5, 0.5, 2)
            s = rng.uniform(0.4, 0.8)
            gy = np.exp(-0.5 * ((t - y0) / s) ** 2).astype(dtype)
            gx = np.exp(-0.5 * ((t - x0) / s) ** 2).astype(dtype)
            structure += dtype.type(rng.uniform(1, 3)) * np.outer(gy, gx)
        structure -= structure.mean()
        structure *= dtype.type(amplitude / max(np.ptp(structure), 1e-12))
        bkg = structure + dtype.type(sky * (1.0 + 0.02 * rng.normal()))
        backgrounds[i] = bkg
        img = rng.standard_normal((side, side), dtype=np.float32).astype(dtype, copy=False)
        img *= dtype.type(sigma)
        img += bkg
        img += scene
        mask = masks[i]
        mask[detected] |= _bit("DETECTED")
        n_cr = 1 + rng.poisson(20 * side * side / 65536)
        cy, cx = rng.integers(0, side, n_cr), rng.integers(0, side, n_cr)
        img[cy, cx] += dtype.type(100 * sigma)
        mask[cy, cx] |= _bit("CR")
        mask[:2, :] |= _bit("EDGE")
        mask[-2:, :] |= _bit("EDGE")
        mask[:, :2] |= _bit("EDGE")
        mask[:, -2:] |= _bit("EDGE")
        var = np.full((side, side), var0, dtype)
        if i == 1 or (i > 1 and i % 2 == 0):
            width = int(side * rng.uniform(0.05, 0.3))
            hole = (
                (slice(None), slice(side - width, None))
                if i % 4
                else (slice(0, width), slice(None))
            )
            img[hole] = np.nan
            var[hole] = np.inf
            mask[hole] = _bit("NO_DATA")
        images[i] = img
        variances[i] = var
    return images, masks, variances, backgrounds
