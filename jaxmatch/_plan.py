"""The static plan of a fit: grids, basis, design matrix and penalty.

Everything here depends on shapes and the static config only, never on pixel
values: it is laid out once per compiled program. `plan_fit` also makes LSST's
eager shape checks (``ValueError`` before anything is compiled).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._basis import AbstractBasis, ChebyshevBasis, SplineBasis
from ._binning import bin_edges, cell_centres
from ._config import MatchBackgroundsConfig
from ._exceptions import UndersampledError
from ._resample import CellCount, fit_edges
from ._spline import MIN_POINTS, knots, max_style
from ._undersample import chebyshev_orders

#: ``(starts, sizes)`` of the cells along one axis [pixels] (`cell_edges`).
Edges = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class FitPlan:
    """Static layout of one fit: the fit and diagnostic grids and the basis.

    Attributes:
        fit_y, fit_x: cell edges of the fit grid (``binSize`` or the re-binned size).
        diag_y, diag_x: bin edges of the diagnostic grid (always ``binSize``).
        basis: the model family.
    """

    fit_y: Edges
    fit_x: Edges
    diag_y: Edges
    diag_x: Edges
    basis: AbstractBasis

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(ny, nx)``: cells of the fit grid."""
        return len(self.fit_y[0]), len(self.fit_x[0])

    @property
    def diagnostic_grid_is_fit_grid(self) -> bool:
        """Whether the diagnostic bins are the fit cells (no second binning pass)."""
        return same_edges(self.fit_y, self.diag_y) and same_edges(self.fit_x, self.diag_x)


class FitProblem(eqx.Module):
    """The per-plan pieces of the least-squares problem (docs/algorithm.md §5, §6).

    Attributes:
        design: ``(ny·nx, K)`` design matrix ``B[(a, b), (p, q)] = Y_p(c_a) X_q(c_b)``.
        penalty: ``(P, K)`` roughness operator ``D``, a NumPy constant.
        constant: ``(K,)`` coefficients of the constant function 1.
        roughness_floor: λ_floor added to λ.
    """

    design: Float[Array, "M K"]
    penalty: Float[np.ndarray, "P K"]
    constant: Float[Array, " K"]
    roughness_floor: float = eqx.field(static=True)


def same_edges(a: Edges, b: Edges) -> bool:
    """Whether two cell layouts along an axis are identical."""
    return len(a[0]) == len(b[0]) and all(np.array_equal(x, y) for x, y in zip(a, b))


def plan_fit(
    config: MatchBackgroundsConfig, shape: tuple[int, ...], bin_size: int | CellCount
) -> FitPlan:
    """Check the static (shape-only) conditions and lay out the fit.

    Arguments:
        config: the static config (``usePolynomial``, ``order``, ``orderY``,
            ``chebyshevTerms``, ``interpStyle``, ``undersampleStyle``,
            ``splineKnotSpacing``, ``binSize``).
        shape: ``(H, W)`` [pixels] of the images.
        bin_size: the fit grid's cell size [pixels] (``binSize``, or the re-binned
            size of INCREASE_NXNYSAMPLE); the diagnostic bins always use
            ``config.binSize``, as LSST's fitRMS does.

    Returns:
        the `FitPlan`.

    Raises:
        ValueError: as LSST does: on the polynomial path when the short side is
            below ``binSize`` or the order exceeds ``ceil(side / binSize) - 1``; on
            the spline path (`UndersampledError`, also a `RuntimeError` as afw's)
            when an axis has too few bins for ``interpStyle`` and
            ``undersampleStyle`` is not ``REDUCE_INTERP_ORDER``.
    """
    h, w = shape  # (H, W)
    fit_y, fit_x = fit_edges(h, bin_size), fit_edges(w, bin_size)
    diag_y, diag_x = bin_edges(h, config.binSize), bin_edges(w, config.binSize)
    if config.usePolynomial:
        basis = _chebyshev_basis(config, (h, w), bin_size)
    else:
        basis = _spline_basis(config, (h, w), fit_y, fit_x)
    return FitPlan(fit_y, fit_x, diag_y, diag_x, basis)


def _chebyshev_basis(
    config: MatchBackgroundsConfig, shape: tuple[int, int], bin_size: int | CellCount
) -> ChebyshevBasis:
    h, w = shape
    order_y, order_x = chebyshev_orders(config)
    for side, order, axis in ((h, order_y, "y"), (w, order_x, "x")):
        if config.chebyshevTerms == "TOTAL":
            side, order, axis = min(h, w), config.order, "short side"
        if side < bin_size:
            raise ValueError(
                f"image {axis} of {side} pixels is smaller than binSize={bin_size}; "
                "use a smaller binSize"
            )
        npoints = math.ceil(side / bin_size)
        if order > npoints - 1:
            raise ValueError(
                f"order={order} > npoints - 1 = {npoints - 1} bins along the {axis} "
                f"({side} pixels, binSize={bin_size}); lower the order or the binSize"
            )
    return ChebyshevBasis((h, w), order_y=order_y, order_x=order_x)


def _spline_basis(
    config: MatchBackgroundsConfig, shape: tuple[int, int], fit_y: Edges, fit_x: Edges
) -> SplineBasis:
    ky = knots(cell_centres(*fit_y), config.splineKnotSpacing)
    kx = knots(cell_centres(*fit_x), config.splineKnotSpacing)
    style = config.interpStyle
    fewest = min(len(ky), len(kx))
    if fewest < MIN_POINTS[style]:
        if config.undersampleStyle != "REDUCE_INTERP_ORDER":
            raise UndersampledError(
                f"{len(ky)} x {len(kx)} spline knots are too few for interpStyle={style} "
                f"(needs {MIN_POINTS[style]} per axis) with undersampleStyle="
                f"{config.undersampleStyle}; use a smaller binSize or REDUCE_INTERP_ORDER"
            )
        style = max_style(fewest)
    return SplineBasis(
        shape, style=style, knots_y=tuple(map(float, ky)), knots_x=tuple(map(float, kx))
    )


def design_matrix(plan: FitPlan, dtype: Any) -> Float[Array, "M K"]:
    """``B[(a, b), (p, q)] = Y_p(c_a) X_q(c_b)`` at the fit-grid centres, ``(ny·nx, K)``."""
    cy = jnp.asarray(cell_centres(*plan.fit_y), dtype=dtype)
    cx = jnp.asarray(cell_centres(*plan.fit_x), dtype=dtype)
    ky, kx = plan.basis.coefficient_shape
    by, bx = plan.basis.matrix_y(cy), plan.basis.matrix_x(cx)
    return jnp.einsum("ap,bq->abpq", by, bx).reshape(-1, ky * kx)


def penalty_rows(basis: AbstractBasis, dtype: Any) -> tuple[np.ndarray, float]:
    """Roughness operator ``D`` ``(P, K)`` with ``P(c) = |D c|²`` (a NumPy array, known
    at trace time), and its λ_floor (§5, §6); see each basis's ``penalty_rows``."""
    return basis.penalty_rows(dtype), basis.roughness_floor


def fit_problem(plan: FitPlan, dtype: Any) -> FitProblem:
    """The `FitProblem` of a plan in ``dtype``."""
    basis = plan.basis
    return FitProblem(
        design=design_matrix(plan, dtype),
        penalty=basis.penalty_rows(dtype),
        constant=basis.constant_coefficients(dtype),
        roughness_floor=basis.roughness_floor,
    )
