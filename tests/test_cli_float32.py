"""The command line in float32 (its default precision) against float64.

A realistic patch on disk: sky 1e4 ADU with a background structure of ±200 ADU,
bright stars up to saturation, partial coverage (NO_DATA regions, so exposures
overlap the reference in part), written as float64 FITS files. ``jaxmatch match``
runs once computing in float32 (``--set dtype=float32``) and once in float64
(``--float64``); the matched images and the written model images must agree to
0.01 of the per-pixel noise σ (~70 ADU here): float32 keeps ~1e-3 ADU of a 1e4 ADU
sky, and the float32 solve of a well-conditioned fit moves the model by far less
than 1e-3 σ, so 0.01 σ leaves margin yet fails for any real float32 defect (an
unshifted variance, a squared condition number), which shows as ≳ 0.1 σ.
"""

import jax
import numpy as np
import pytest
from astropy.io import fits

import jaxmatch as jm
from jaxmatch import cli

SKY = 1e4


@pytest.fixture(scope="module")
def patch_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli float32 ü")
    patch = jm.simulate_patch(
        4, (128, 128), seed=7, sky_level=SKY, background_amplitude=200.0, n_stars=40
    )
    for i in range(4):
        exposure = jm.Exposure(
            patch.images[i], patch.masks[i], patch.variances[i], mask_planes=patch.mask_planes
        )
        jm.io.writeExposure(exposure, folder / f"warp {i}.fits")
    return folder, patch


def _first_image(path):
    with fits.open(path) as hdus:
        return next(h.data for h in hdus if h.data is not None).astype(np.float64)


def _run(folder, out, *extra):
    files = sorted(str(p) for p in folder.glob("warp *.fits"))
    args = ["match", *files, "--out", str(out), "--model-image", "--set", "binSize=16", *extra]
    assert cli.main(args) == 0


def test_cli_float32_equals_float64(tmp_path, patch_files):
    # Chebyshev order 4 (the engine's float32 lanes cover every family; this is
    # the command's own path: reading, the effective-model report, writing)
    config = ("--set", "usePolynomial=True", "--set", "order=4")
    folder, patch = patch_files
    _run(folder, tmp_path / "f32", "--set", "dtype=float32", *config)
    _run(folder, tmp_path / "f64", "--float64", *config)
    sigma = np.sqrt(np.median(patch.variances))  # per-pixel noise [ADU]
    assert 50 < sigma < 100
    compared = 0
    for i in range(4):
        for suffix in ("", ".bkg"):  # matched image, model image
            name = f"warp {i}{suffix}.fits"
            paths = [tmp_path / d / name for d in ("f32", "f64")]
            if not paths[0].exists():
                assert not paths[1].exists()
                continue
            a32, a64 = (_first_image(p) for p in paths)
            usable = np.isfinite(a32) & np.isfinite(a64) & (patch.masks[i] == 0)
            assert usable.mean() > 0.3
            diff = np.abs(a32 - a64)[usable]
            assert diff.max() <= 0.01 * sigma, (name, diff.max() / sigma)
            compared += 1
    assert compared == 8  # 4 matched and 4 model images (the reference: a zero model)


def test_float64_option_is_the_commands_precision_only(tmp_path, patch_files):
    # In a process computing in float32 (JAX's default; this suite enables x64
    # globally, so it is switched off here), `cli.main([..., "--float64"])` writes
    # float64 images and leaves the process in float32: a survey worker runs
    # patch after patch in one process, and a notebook keeps its own precision.
    folder, _ = patch_files
    jax.config.update("jax_enable_x64", False)
    try:
        _run(
            folder, tmp_path / "f64", "--float64", "--set", "usePolynomial=True", "--set", "order=4"
        )
        assert not jax.config.jax_enable_x64
        with fits.open(tmp_path / "f64" / "warp 1.fits") as hdus:
            image = next(h for h in hdus if h.data is not None)
            assert image.data.dtype == np.dtype(">f8")  # the command did run in float64
    finally:
        jax.config.update("jax_enable_x64", True)
