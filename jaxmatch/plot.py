"""Figures of a background matching (matplotlib, an optional extra: ``jaxmatch[plot]``).

- `plot_difference_fit`: for one exposure, the binned difference ``ref - sci``,
  the fitted model and what the model leaves of the difference;
- `plot_residuals`: the binned ``ref - matched`` of several exposures;
- `plot_mosaic`: the exposures before and after matching, side by side;
- `plot_reference_costs`: the LSST reference cost of each exposure as bars;
- `plot_demo`: one figure of all four for ``jaxmatch demo --plot``;
- `save_figure`: write a figure atomically.

Images are shown as block means of the *usable* pixels (no bad mask plane set,
finite), ``bin_size`` pixels on a side, so the smooth backgrounds are visible
under the sources; cells without a usable pixel are grey. ``origin="lower"``:
row 0 at the bottom, as ds9 shows it.

Every function takes ``fig=``, a matplotlib ``Figure`` or ``SubFigure`` to draw
into (None: a new ``Figure``), and returns it. Figures are built with
matplotlib's object API and an Agg canvas, never pyplot, so plotting changes no
global matplotlib state and needs no display. matplotlib is imported inside the
functions: ``import jaxmatch.plot`` works without it.
"""
# pyright: reportArgumentType=false, reportCallIssue=false, reportGeneralTypeIssues=false
# (matplotlib's stubs (Optional mappables, SubFigure) and NumPy inputs to the JAX-typed statistics.)

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._config import DEFAULT_BAD_MASK_PLANES
from ._exposure import Exposure

__all__ = [
    "plot_demo",
    "plot_difference_fit",
    "plot_mosaic",
    "plot_reference_costs",
    "plot_residuals",
    "save_figure",
]

_DISPLAY_CELLS = 32  # default: about this many display cells along the longer side


def plot_difference_fit(
    reference,
    science,
    model,
    *,
    bin_size: int | None = None,
    bad_mask_planes: Sequence[str] = DEFAULT_BAD_MASK_PLANES,
    title: str | None = None,
    fig=None,
):
    """Three panels for one exposure: binned ``ref - sci``, the model, and their difference.

    Arguments:
        reference, science: `Exposure` objects (or 2-D images [ADU]; then every
            finite pixel is usable).
        model: the fitted `BackgroundModel` of ``science`` (or its image [ADU]).
        bin_size: display cell side [pixels] (None: about 32 cells per side;
            the config's ``binSize`` shows the fit's own grid).
        bad_mask_planes: planes whose pixels are left out (LSST ``badMaskPlanes``).
        title: a title over the three panels.
        fig: a ``Figure``/``SubFigure`` to draw into (None: a new one).

    The first two panels share one colour scale; the third is symmetric about 0.
    """
    ref_image, ref_ok = _image_and_usable(reference, bad_mask_planes)
    sci_image, sci_ok = _image_and_usable(science, bad_mask_planes)
    model_image = _model_image(model, ref_image.shape)
    if sci_image.shape != ref_image.shape:
        raise ValueError(f"science {sci_image.shape} and reference {ref_image.shape} differ")
    b = _bin_size(bin_size, ref_image.shape)
    usable = ref_ok & sci_ok
    with np.errstate(invalid="ignore"):
        diff = _block_mean(ref_image - sci_image, usable, b)
    fitted = _block_mean(model_image, np.ones_like(usable), b)
    left = diff - _block_mean(model_image, usable, b)
    fig = _figure(fig, (11.0, 3.6))
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    lo, hi = _limits([diff, fitted])
    im = _show(axes[0], diff, "reference - science", vmin=lo, vmax=hi)
    _show(axes[1], fitted, "fitted model", vmin=lo, vmax=hi)
    fig.colorbar(im, ax=axes[:2], shrink=0.85, label="[ADU]")
    r = _symmetric(left)
    im = _show(axes[2], left, "difference - model", vmin=-r, vmax=r, cmap="RdBu_r")
    fig.colorbar(im, ax=axes[2], shrink=0.85, label="[ADU]")
    if title:
        fig.suptitle(title)
    return fig


def plot_residuals(
    reference,
    matched,
    *,
    names: Sequence[str] | None = None,
    bin_size: int | None = None,
    bad_mask_planes: Sequence[str] = DEFAULT_BAD_MASK_PLANES,
    title: str | None = "reference - matched",
    fig=None,
):
    """Residual maps: binned ``ref - matched`` of each exposure, on one symmetric scale.

    Arguments:
        reference: the reference `Exposure` (or 2-D image).
        matched: the matched exposures: a list of `Exposure`/2-D images, or a batch
            `Exposure` / array ``(N, H, W)``.
        names: a label per exposure (default ``0, 1, ...``).
        bin_size, bad_mask_planes, title, fig: as in `plot_difference_fit`.
    """
    ref_image, ref_ok = _image_and_usable(reference, bad_mask_planes)
    items = _as_list(matched)
    names = _names(names, len(items))
    b = _bin_size(bin_size, ref_image.shape)
    maps = []
    for item in items:
        image, ok = _image_and_usable(item, bad_mask_planes)
        if image.shape != ref_image.shape:
            raise ValueError(f"matched {image.shape} and reference {ref_image.shape} differ")
        with np.errstate(invalid="ignore"):
            maps.append(_block_mean(ref_image - image, ref_ok & ok, b))
    r = _symmetric(*maps)
    fig = _figure(fig, (2.4 * len(maps) + 1.0, 2.8))
    axes = np.atleast_1d(fig.subplots(1, len(maps), sharex=True, sharey=True, squeeze=False)[0])
    im = None
    for ax, cells, name in zip(axes, maps, names):
        im = _show(ax, cells, name, vmin=-r, vmax=r, cmap="RdBu_r")
    fig.colorbar(im, ax=list(axes), shrink=0.85, label="[ADU]")
    if title:
        fig.suptitle(title)
    return fig


def plot_mosaic(
    before,
    after=None,
    *,
    names: Sequence[str] | None = None,
    bin_size: int | None = None,
    bad_mask_planes: Sequence[str] = DEFAULT_BAD_MASK_PLANES,
    title: str | None = None,
    fig=None,
):
    """The exposures side by side, before and (if given) after matching.

    Arguments:
        before, after: the exposures (a list of `Exposure`/2-D images or a batch);
            ``after`` has the same length and shape.
        names, bin_size, bad_mask_planes, title, fig: as in `plot_residuals`.

    Both rows share one colour scale (the 2-98 % range of the ``before`` cells),
    so backgrounds that differ before and agree after show as such.
    """
    rows = [("before", _as_list(before))]
    if after is not None:
        rows.append(("after", _as_list(after)))
        if len(rows[1][1]) != len(rows[0][1]):
            raise ValueError(f"after has {len(rows[1][1])} exposures, before has {len(rows[0][1])}")
    n = len(rows[0][1])
    names = _names(names, n)
    first, _ = _image_and_usable(rows[0][1][0], bad_mask_planes)
    b = _bin_size(bin_size, first.shape)
    cells = [
        [_block_mean(*_image_and_usable(item, bad_mask_planes), b) for item in items]
        for _, items in rows
    ]
    lo, hi = _limits(cells[0], percentiles=(2.0, 98.0))
    fig = _figure(fig, (2.4 * n + 1.0, 2.5 * len(rows) + 0.4))
    axes = fig.subplots(len(rows), n, sharex=True, sharey=True, squeeze=False)
    im = None
    for r, (label, _) in enumerate(rows):
        for c in range(n):
            im = _show(axes[r, c], cells[r][c], names[c] if r == 0 else None, vmin=lo, vmax=hi)
        axes[r, 0].set_ylabel(label)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85, label="[ADU]")
    if title:
        fig.suptitle(title)
    return fig


def plot_reference_costs(
    costs,
    *,
    names: Sequence[str] | None = None,
    reference: int | None = None,
    title: str | None = "reference cost",
    fig=None,
):
    """The reference cost of each exposure as bars; the reference's bar highlighted.

    Arguments:
        costs: ``(N,)`` costs (`jaxmatch.reference_costs`); NaN (excluded) bars are
            left empty.
        names: a label per exposure.
        reference: the index of the chosen reference (default: the lowest cost).
    """
    costs = np.asarray(costs, dtype=np.float64).ravel()
    names = _names(names, costs.size)
    if reference is None and np.any(np.isfinite(costs)):
        reference = int(np.nanargmin(costs))
    fig = _figure(fig, (max(3.0, 0.6 * costs.size + 1.5), 3.0))
    ax = fig.subplots()
    colours = ["tab:orange" if i == reference else "tab:blue" for i in range(costs.size)]
    ax.bar(np.arange(costs.size), np.nan_to_num(costs, nan=0.0), color=colours)
    ax.set_xticks(np.arange(costs.size), names, rotation=45 if costs.size > 6 else 0)
    ax.set_ylabel("cost (lower is better)")
    ax.axhline(0.0, color="0.3", lw=0.8)
    if title:
        ax.set_title(title)
    return fig


def plot_demo(patch, run_result, path: str | os.PathLike | None, *, config=None):
    """The demo's figure: mosaics, residual maps, one exposure's fit and the costs.

    Arguments:
        patch: the `SimulatedPatch` that was matched.
        run_result: the Struct returned by `MatchBackgroundsTask.run` on it.
        path: where to write the figure (format from the suffix, PNG by default;
            written atomically), or None to only return it.
        config: the `MatchBackgroundsConfig` of the run (for the bad mask planes,
            the reference-cost weights and the display grid); None: the defaults.

    Returns the ``Figure``.
    """
    from ._config import MatchBackgroundsConfig
    from ._reference import reference_costs, reference_statistics

    config = MatchBackgroundsConfig() if config is None else config
    infos = list(run_result.backgroundInfoList)
    n = len(infos)
    if n != len(patch.images):
        raise ValueError(f"run_result has {n} exposures, the patch {len(patch.images)}")
    ref = next(i for i, s in enumerate(infos) if s.isReference)
    planes = patch.mask_planes
    exposures = [
        Exposure(patch.images[i], patch.masks[i], patch.variances[i], mask_planes=planes)
        for i in range(n)
    ]
    models = [
        None if s.backgroundModel is None else np.asarray(s.backgroundModel.getImage())
        for s in infos
    ]
    matched = [
        e if m is None else Exposure(e.image + m, e.mask, e.variance, mask_planes=planes)
        for e, m in zip(exposures, models)
    ]
    names = [
        f"{i} (ref)" if i == ref else f"{i} (failed)" if models[i] is None else str(i)
        for i in range(n)
    ]
    bad = config.badMaskPlanes
    b = min(config.binSize, _bin_size(None, patch.images.shape[1:]))

    stats = []
    for e in exposures:
        _, usable = _image_and_usable(e, bad)
        stats.append([float(v) for v in reference_statistics(np.asarray(e.image), usable)])
    variance, level, coverage = (np.asarray(c) for c in zip(*stats))
    costs = np.asarray(
        reference_costs(
            variance,
            level,
            coverage,
            weight_coverage=config.bestRefWeightCoverage,
            weight_variance=config.bestRefWeightVariance,
            weight_level=config.bestRefWeightLevel,
        )
    )

    fig = _figure(None, (max(11.0, 2.3 * n + 1.5), 12.5))
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[2.0, 1.0, 1.25])
    plot_mosaic(
        exposures,
        matched,
        names=names,
        bin_size=b,
        bad_mask_planes=bad,
        title=f"{n} exposures, {b}-pixel block means of the usable pixels",
        fig=top,
    )
    plot_residuals(
        exposures[ref],
        matched,
        names=names,
        bin_size=b,
        bad_mask_planes=bad,
        title="residual maps: reference - matched",
        fig=middle,
    )
    left, right = bottom.subfigures(1, 2, width_ratios=[3.0, 1.0])
    fitted = [i for i in range(n) if models[i] is not None and i != ref]
    if fitted:
        k = max(fitted, key=lambda i: float(np.ptp(models[i])))
        truth = patch.backgrounds[ref] - patch.backgrounds[k]
        rms = float(np.sqrt(np.mean((truth - models[k]) ** 2)))
        plot_difference_fit(
            exposures[ref],
            exposures[k],
            models[k],
            bin_size=b,
            bad_mask_planes=bad,
            title=f"exposure {k}: fit of the difference (true - fitted RMS {rms:.3f} ADU)",
            fig=left,
        )
    else:
        left.suptitle("every fit failed")
    plot_reference_costs(costs, names=[str(i) for i in range(n)], reference=ref, fig=right)
    if path is not None:
        save_figure(fig, path)
    return fig


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 100) -> None:
    """Write a figure atomically; the format comes from the suffix (PNG without one)."""
    from .io import atomic_write

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))


# -- helpers ------------------------------------------------------------------------------
def _figure(fig, size):
    if fig is not None:
        return fig
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg, whatever pyplot's backend is
    return fig


def _as_list(items) -> list[Any]:
    if isinstance(items, Exposure):
        return [items[i] for i in range(len(items))] if items.batch_shape else [items]
    if isinstance(items, np.ndarray) or hasattr(items, "__array__"):
        array = np.asarray(items)
        return [array] if array.ndim == 2 else list(array)
    items = list(items)
    if not items:
        raise ValueError("no exposures to plot")
    return items


def _names(names, n) -> list[str]:
    names = [str(i) for i in range(n)] if names is None else [str(s) for s in names]
    if len(names) != n:
        raise ValueError(f"{len(names)} names for {n} exposures")
    return names


def _image_and_usable(item, bad_mask_planes) -> tuple[np.ndarray, np.ndarray]:
    """The image as float64 and the usable pixels (finite, no bad plane set)."""
    if isinstance(item, Exposure):
        if item.batch_shape:
            raise ValueError(f"expected one exposure, got a batch {item.image.shape}")
        image = np.asarray(item.image, dtype=np.float64)
        planes = item.getMaskPlaneDict()
        bits = 0
        for name in bad_mask_planes:
            if name in planes:  # a plane the exposure lacks is never set
                bits |= 1 << planes[name]
        usable = (np.asarray(item.mask) & bits) == 0
    else:
        image = np.asarray(item, dtype=np.float64)
        if image.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {image.shape}")
        usable = np.ones(image.shape, dtype=bool)
    return image, usable & np.isfinite(image)


def _model_image(model, shape) -> np.ndarray:
    image = np.asarray(model.getImage() if hasattr(model, "getImage") else model, np.float64)
    if image.shape != tuple(shape):
        raise ValueError(f"the model image {image.shape} differs from the exposures {shape}")
    return image


def _bin_size(bin_size, shape) -> int:
    if bin_size is None:
        return max(1, math.ceil(max(shape) / _DISPLAY_CELLS))
    if int(bin_size) < 1:
        raise ValueError(f"bin_size must be >= 1 pixel, got {bin_size}")
    return int(bin_size)


def _block_mean(image: np.ndarray, usable: np.ndarray, b: int) -> np.ndarray:
    """Mean of the usable pixels in each ``b × b`` block (NaN where none is usable)."""
    h, w = image.shape
    ny, nx = math.ceil(h / b), math.ceil(w / b)
    values = np.zeros((ny * b, nx * b))
    weight = np.zeros((ny * b, nx * b))
    values[:h, :w] = np.where(usable, image, 0.0)
    weight[:h, :w] = usable
    total = values.reshape(ny, b, nx, b).sum(axis=(1, 3))
    count = weight.reshape(ny, b, nx, b).sum(axis=(1, 3))
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _limits(arrays, percentiles=(1.0, 99.0)) -> tuple[float, float]:
    values = np.concatenate([np.ravel(a) for a in arrays])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return -1.0, 1.0
    lo, hi = np.percentile(values, percentiles)
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 1.0, float(hi) + 1.0)


def _symmetric(*arrays) -> float:
    values = np.concatenate([np.ravel(np.abs(a)) for a in arrays])
    values = values[np.isfinite(values)]
    r = float(np.percentile(values, 99.0)) if values.size else 0.0
    return r if r > 0 else 1.0


def _show(ax, cells, title, *, vmin, vmax, cmap="viridis"):
    import matplotlib

    colormap = matplotlib.colormaps[cmap].with_extremes(bad="0.75")
    im = ax.imshow(
        cells, origin="lower", interpolation="nearest", cmap=colormap, vmin=vmin, vmax=vmax
    )
    if title:
        ax.set_title(title, fontsize="medium")
    ax.set_xticks([])
    ax.set_yticks([])
    return im
