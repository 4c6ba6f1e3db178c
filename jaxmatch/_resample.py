"""LSST's ``INCREASE_NXNYSAMPLE``: re-fit an undersampled exposure on a finer fit grid.

What LSST's (Gen2) ``MatchBackgroundsTask.matchBackgrounds`` does, polynomial path,
when ``m = min(distinct valid bin columns, distinct valid bin rows) <= order``::

    newBinSize = (m * binSize) // (order + 1)
    bctrl.setNxSample(newBinSize)
    bctrl.setNySample(newBinSize)
    bkgd = afwMath.makeBackground(diffMI, bctrl)     # do over

afw's ``BackgroundControl.setNxSample/setNySample`` take the *number of cells* along
each axis, not a cell size: the re-fit uses ``newBinSize`` cells per axis (e.g. 600
pixels, binSize 128, order 4, m = 2: 51 cells of ~12 pixels), at the full order. The
diagnostic bins (``fitRMS``) keep ``binSize``. jaxmatch does the same (docs/algorithm.md
§5); the fit grid of ``n`` cells is afw's layout (`jaxmatch._binning.cell_edges`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import jax.numpy as jnp
import numpy as np

from ._config import MatchBackgroundsConfig
from ._status import NO_OVERLAP, UNDERSAMPLED
from ._undersample import chebyshev_orders

R = TypeVar("R")

__all__ = ["CellCount", "fit_edges", "fit_grid_size", "lsst_sample_count", "increase_nxnysample"]


@dataclasses.dataclass(frozen=True)
class CellCount:
    """A fit grid given as a number of cells per axis (afw's ``nxSample``/``nySample``).

    Used where a bin size [pixels] is expected for the fit grid (a static, hashable
    argument). In the layout checks it stands for the bin size of ``n`` cells:
    ``side / grid`` is ``n`` (the number of cells) and ``side < grid`` holds when
    there are more cells than pixels.
    """

    n: int

    def __post_init__(self):
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ValueError(f"a fit grid needs at least one cell per axis, got {self.n!r}")

    def __rtruediv__(self, side: int) -> int:
        return self.n

    def __gt__(self, side: int) -> bool:  # ``side < grid``: cells narrower than a pixel
        return self.n > side

    def __lt__(self, side: int) -> bool:
        return False


def fit_edges(length: int, grid: int | CellCount) -> tuple[np.ndarray, np.ndarray]:
    """Starts and sizes [pixels] of the fit-grid cells along one axis.

    ``grid``: a bin size (``ceil(length / grid)`` cells) or a `CellCount`. Either
    way the cells follow afw's layout (`jaxmatch._binning.cell_edges`).
    """
    from ._binning import cell_edges

    if not isinstance(grid, CellCount):
        return cell_edges(length, grid)
    if grid.n > length:
        raise ValueError(f"{grid.n} cells do not fit in {length} pixels")
    # afw's layout (the formula of cell_edges, which derives n from a bin size).
    n = grid.n
    ends = np.minimum(((np.arange(n) + 1) * length + n // 2) // n, length)
    starts = np.concatenate([[0], ends[:-1]])
    return starts.astype(np.int64), (ends - starts).astype(np.int64)


def lsst_sample_count(m: np.ndarray, bin_size: int, order: int) -> np.ndarray:
    """LSST's new sampling ``(m · binSize) // (order + 1)``: cells per axis."""
    return (np.asarray(m, dtype=np.int64) * bin_size) // (order + 1)


def fit_grid_size(grid: int | CellCount, shape: tuple[int, ...]) -> int:
    """The fit grid's cell size [pixels]: ``grid`` itself, or for a `CellCount` the
    largest cell side of either axis (what ``MatchResult.bin_size`` records)."""
    if isinstance(grid, CellCount):
        return max(int(fit_edges(length, grid)[1].max()) for length in shape)
    return grid


def increase_nxnysample(
    result: R,
    config: MatchBackgroundsConfig,
    shape: tuple[int, ...],
    refit: Callable[[np.ndarray, CellCount], R],
    check: Callable[[CellCount], object],
    set_rows: Callable[[R, np.ndarray, R], R],
) -> R:
    """Re-fit every undersampled exposure of a batch result once, as LSST does.

    Arguments:
        result: the engine's batch result (``status``, ``min_sampled`` and the
            per-exposure fields, leading axis N).
        config: the static config (``binSize``, ``order``, ``orderY``).
        shape: ``(H, W)`` [pixels].
        refit: ``refit(indices, grid)`` fits exposures ``indices`` on the fit grid
            ``grid`` with ``THROW_EXCEPTION`` and returns their result.
        check: raises `ValueError` if the order cannot be fitted on ``grid``.
        set_rows: ``set_rows(result, indices, rows)`` puts ``rows`` into ``result``.

    Exposures with ``m = 0`` (no overlap) are not retried. The new grid has
    ``n = (m · binSize) // (order + 1)`` cells per axis (TENSOR: the larger order);
    ``n < 1``, more cells than pixels, or an order the grid cannot hold leave the
    status ``UNDERSAMPLED``, as does a re-fit still undersampled or without any
    valid cell.
    """
    status = np.asarray(result.status)  # type: ignore[attr-defined]
    m = np.asarray(result.min_sampled)  # type: ignore[attr-defined]
    order = max(chebyshev_orders(config))
    retry = np.flatnonzero((status == UNDERSAMPLED) & (m > 0))
    counts = lsst_sample_count(m[retry], config.binSize, order)
    for n in np.unique(counts):
        idx = retry[counts == n]
        if n < 1 or n > min(shape):
            continue  # still undersampled
        grid = CellCount(int(n))
        try:
            check(grid)
        except ValueError:
            continue
        redo = refit(idx, grid)
        # A re-binned grid left with no valid cell is still an undersampling failure.
        codes = redo.status  # type: ignore[attr-defined]
        # R is the engine's (dataclass) batch result; the TypeVar does not say so
        redo = dataclasses.replace(  # type: ignore[type-var]
            redo,  # pyright: ignore[reportArgumentType]
            status=jnp.where(codes == NO_OVERLAP, UNDERSAMPLED, codes),
        )
        result = set_rows(result, idx, redo)
    return result
