"""Tests of `jaxmatch.plot`: every figure draws and renders with Agg, without pyplot."""

import io
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")  # the optional `plot` extra

from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from jaxmatch import BackgroundModel, Basis, Exposure, Struct, simulate_patch  # noqa: E402
from jaxmatch.plot import (  # noqa: E402
    plot_demo,
    plot_difference_fit,
    plot_mosaic,
    plot_reference_costs,
    plot_residuals,
    save_figure,
)

SHAPE = (48, 40)


def _render(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


@pytest.fixture(scope="module")
def patch():
    return simulate_patch(3, SHAPE, seed=2)


def _exposures(patch):
    return [
        Exposure(patch.images[i], patch.masks[i], patch.variances[i], mask_planes=patch.mask_planes)
        for i in range(len(patch.images))
    ]


def _model(rng, batch=()):
    basis = Basis("CHEBYSHEV", SHAPE, order_y=1, order_x=1)
    return BackgroundModel(jnp.asarray(rng.normal(size=(*batch, 2, 2))), basis)


def test_difference_fit(patch, rng):
    ref, sci = _exposures(patch)[:2]
    model = patch.backgrounds[0] - patch.backgrounds[1]  # a model image works too
    fig = plot_difference_fit(ref, sci, model, bin_size=8, title="exposure 1")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5  # three panels and two colour bars
    assert [ax.get_title() for ax in fig.axes[:3]] == [
        "reference - science",
        "fitted model",
        "difference - model",
    ]
    assert fig.axes[0].images[0].get_array().shape == (6, 5)  # 48 x 40 in 8-pixel cells
    _render(fig)
    # plain arrays and a BackgroundModel; a wrong model shape is refused
    _render(plot_difference_fit(patch.images[0], patch.images[1], _model(rng)))
    with pytest.raises(ValueError, match="model image"):
        plot_difference_fit(ref, sci, np.zeros((4, 4)))


def test_residuals_and_mosaic(patch):
    exposures = _exposures(patch)
    matched = [
        Exposure(
            e.image + (patch.backgrounds[0] - patch.backgrounds[i]),
            e.mask,
            e.variance,
            mask_planes=patch.mask_planes,
        )
        for i, e in enumerate(exposures)
    ]
    fig = plot_residuals(exposures[0], matched, names=["a", "b", "c"])
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
    _render(fig)
    _render(plot_residuals(patch.images[0], patch.images))  # a (N, H, W) array
    fig = plot_mosaic(exposures, matched, bin_size=4)
    assert len(fig.axes) == 2 * 3 + 1
    _render(fig)
    _render(plot_mosaic(patch.images))  # "before" alone
    with pytest.raises(ValueError, match="after has 2"):
        plot_mosaic(exposures, matched[:2])
    with pytest.raises(ValueError, match="names"):
        plot_residuals(exposures[0], matched, names=["only one"])


def test_reference_costs():
    fig = plot_reference_costs([0.8, np.nan, 0.3, 0.5], names=["w", "x", "y", "z"])
    bars = fig.axes[0].patches
    assert len(bars) == 4
    assert bars[2].get_facecolor() == to_rgba("tab:orange")  # the lowest cost is the reference
    assert bars[1].get_height() == 0.0  # excluded
    _render(fig)


def test_into_subfigures(patch):
    fig = Figure(layout="constrained")
    left, right = fig.subfigures(1, 2)
    exposures = _exposures(patch)
    assert plot_mosaic(exposures, fig=left) is left
    assert plot_reference_costs([1.0, 2.0, 3.0], fig=right) is right
    _render(fig)


def test_plot_demo(patch, rng, tmp_path):
    models = _model(rng, batch=(2,))
    infos = [
        Struct(isReference=False, backgroundModel=models[0], fitRMS=0.1, matchedMSE=1.0,
               diffImVar=1.0),
        Struct(isReference=True, backgroundModel=None, fitRMS=None, matchedMSE=None,
               diffImVar=None),
        Struct(isReference=False, backgroundModel=None, fitRMS=None, matchedMSE=None,
               diffImVar=None),  # a failed fit
    ]  # fmt: skip
    path = tmp_path / "demo.png"
    fig = plot_demo(patch, Struct(backgroundInfoList=infos), path)
    assert isinstance(fig, Figure)
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert [p.name for p in tmp_path.iterdir()] == ["demo.png"]  # no temporary file left
    titles = [ax.get_title() for ax in fig.axes]
    assert "1 (ref)" in titles and "2 (failed)" in titles
    with pytest.raises(ValueError, match="exposures"):
        plot_demo(patch, Struct(backgroundInfoList=infos[:2]), None)
    save_figure(fig, tmp_path / "demo.pdf")  # the format follows the suffix
    assert (tmp_path / "demo.pdf").read_bytes()[:4] == b"%PDF"


def test_import_is_lazy():
    code = "import sys, jaxmatch.plot; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
