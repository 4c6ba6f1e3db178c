"""Background-model families: `ChebyshevBasis` and `SplineBasis`.

Every model is separable: ``M(y, x) = Σ_pq C[p, q] Y_p(y) X_q(x)``, so the model
image is ``Y (H × ky) · C (ky × kx) · Xᵀ (kx × W)`` and never needs an
``(H·W, K)`` design matrix. The one exception, ``AKIMA_SPLINE``, is evaluated
separably too: 1-D Akima interpolation (`_akima`) of the knot values along y for
every knot column, then along x (the order afw uses).

A basis is static structure (frozen, hashable: a static field of
`BackgroundModel` and a cache key of the compiled programs). Each family owns
everything that differs between them: the coefficient shape, the 1-D matrices,
the evaluation, the roughness penalty and its floor, the coefficients of the
constant function and the active-term (undersampling) rule.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, cast

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ._akima import akima_grid
from ._chebyshev import chebyshev_matrix, to_unit_interval
from ._config import MatchBackgroundsConfig
from ._custom_types import AnyArray
from ._separable import constant_if_known, outer_sum
from ._spline import DEGREE, cardinal_basis, difference_matrix
from ._undersample import ActiveTerms, all_terms_active, chebyshev_active_terms

# λ_floor: fills missing bins smoothly in the spline fit (§6); for Chebyshev it
# only keeps d(result)/dλ finite at λ = 0 (the penalty enters as √λ).
SPLINE_ROUGHNESS_FLOOR = 1e-6
CHEBYSHEV_ROUGHNESS_FLOOR = 1e-12


class _BasisMeta(abc.ABCMeta):
    """Lets ``Basis(kind, shape, ...)`` (the single class of earlier versions) build
    the family named by ``kind``; the families themselves construct as usual."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is AbstractBasis:
            return basis_from_fields(*args, **kwargs)
        return super().__call__(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class AbstractBasis(metaclass=_BasisMeta):
    """A background-model family on an ``(H, W)`` image (abstract).

    Attributes:
        shape: ``(H, W)`` [pixels] of the image the model lives on.
    """

    shape: tuple[int, int]

    #: Name of the family in model files (the ``KIND`` card).
    kind: ClassVar[str]
    #: λ_floor added to the roughness λ (§6).
    roughness_floor: ClassVar[float]

    @property
    @abc.abstractmethod
    def coefficient_shape(self) -> tuple[int, int]:
        """``(ky, kx)``: the shape of the coefficient matrix ``C``."""

    @abc.abstractmethod
    def matrix_y(self, y: Float[AnyArray, " n"]) -> Float[Array, "n ky"]:
        """``Y_p(y)`` for pixel rows ``y`` [pixels] (the linear fitting basis)."""

    @abc.abstractmethod
    def matrix_x(self, x: Float[AnyArray, " n"]) -> Float[Array, "n kx"]:
        """``X_q(x)`` for pixel columns ``x`` [pixels] (the linear fitting basis)."""

    @abc.abstractmethod
    def penalty_rows(self, dtype: Any) -> np.ndarray:
        """Roughness operator ``D`` ``(P, K)`` with ``P(c) = |D c|²`` (NumPy, known at
        trace time), on the flattened coefficients."""

    @abc.abstractmethod
    def constant_coefficients(self, dtype: Any) -> Float[Array, " K"]:
        """Flattened coefficients of the constant function 1."""

    @abc.abstractmethod
    def active_terms(
        self,
        config: MatchBackgroundsConfig,
        valid: Bool[Array, "ny nx"],
        design: Float[Array, "M K"] | None = None,
    ) -> ActiveTerms:
        """The terms the fit may use given the valid bins ``(ny, nx)`` (§5)."""

    @classmethod
    @abc.abstractmethod
    def from_fields(cls, shape: tuple[int, int], fields: dict[str, Any]) -> AbstractBasis:
        """The basis from the fields a model file records (those it has; the fields
        of the other family are ignored)."""

    def evaluate(
        self,
        coefficients: Float[Array, "ky kx"],
        y: Float[AnyArray, " ny"],
        x: Float[AnyArray, " nx"],
    ) -> Float[Array, "ny nx"]:
        """The model on the grid ``y × x`` of pixel coordinates, separably."""
        left = constant_if_known(self.matrix_y, y) @ coefficients
        return outer_sum(left, constant_if_known(self.matrix_x, x))


#: The name of the abstract base in earlier versions (``Basis(kind, ...)`` still works).
Basis = AbstractBasis


@dataclasses.dataclass(frozen=True)
class ChebyshevBasis(AbstractBasis):
    """``M(y, x) = Σ_pq C[p, q] T_p(v) T_q(u)`` on the image box mapped onto [-1, 1]².

    Attributes:
        shape: ``(H, W)`` [pixels].
        order_y: largest Chebyshev order along y (LSST ``orderY`` or ``order``).
        order_x: largest Chebyshev order along x (LSST ``order``).
    """

    order_y: int = 0
    order_x: int = 0

    kind: ClassVar[str] = "CHEBYSHEV"
    roughness_floor: ClassVar[float] = CHEBYSHEV_ROUGHNESS_FLOOR

    @property
    def coefficient_shape(self) -> tuple[int, int]:
        return (self.order_y + 1, self.order_x + 1)

    @property
    def style(self) -> str:
        """``""``: no interpolation style (the field of the single ``Basis`` class of
        earlier versions, as model files record it)."""
        return ""

    def matrix_y(self, y: Float[AnyArray, " n"]) -> Float[Array, "n ky"]:
        return chebyshev_matrix(to_unit_interval(y, self.shape[0]), self.order_y)

    def matrix_x(self, x: Float[AnyArray, " n"]) -> Float[Array, "n kx"]:
        return chebyshev_matrix(to_unit_interval(x, self.shape[1]), self.order_x)

    @classmethod
    def from_fields(cls, shape: tuple[int, int], fields: dict[str, Any]) -> ChebyshevBasis:
        return cls(shape, order_y=int(fields["order_y"]), order_x=int(fields["order_x"]))

    def penalty_rows(self, dtype: Any) -> np.ndarray:
        """The order-weighted ridge ``Σ (p + q)² C[p, q]²`` (the constant is free)."""
        ky, kx = self.coefficient_shape
        pq = np.add.outer(np.arange(ky), np.arange(kx)).reshape(-1)
        return np.diag(pq.astype(dtype))

    def constant_coefficients(self, dtype: Any) -> Float[Array, " K"]:
        """``T_0 T_0``: the first coefficient."""
        ky, kx = self.coefficient_shape
        return jnp.zeros(ky * kx, dtype).at[0].set(1.0)

    def active_terms(
        self,
        config: MatchBackgroundsConfig,
        valid: Bool[Array, "ny nx"],
        design: Float[Array, "M K"] | None = None,
    ) -> ActiveTerms:
        """LSST's row/column rule and the rank rule (`chebyshev_active_terms`)."""
        return chebyshev_active_terms(config, valid, design)


@dataclasses.dataclass(frozen=True)
class SplineBasis(AbstractBasis):
    """Cardinal splines on knots: ``C[p, q]`` is the model's value at knot ``(p, q)``.

    Attributes:
        shape: ``(H, W)`` [pixels].
        style: afw interpolation style (``CONSTANT``, ``LINEAR``, ``NATURAL_SPLINE``,
            ``AKIMA_SPLINE``), after REDUCE_INTERP_ORDER.
        knots_y: knot rows [pixels], increasing.
        knots_x: knot columns [pixels], increasing.
    """

    style: str = "NATURAL_SPLINE"
    knots_y: tuple[float, ...] = ()
    knots_x: tuple[float, ...] = ()

    kind: ClassVar[str] = "SPLINE"
    roughness_floor: ClassVar[float] = SPLINE_ROUGHNESS_FLOOR

    @property
    def coefficient_shape(self) -> tuple[int, int]:
        return (len(self.knots_y), len(self.knots_x))

    @property
    def order_y(self) -> int:
        """``0``: no Chebyshev order (as model files record it)."""
        return 0

    @property
    def order_x(self) -> int:
        """``0``: no Chebyshev order (as model files record it)."""
        return 0

    def matrix_y(self, y: Float[AnyArray, " n"]) -> Float[Array, "n ky"]:
        return cardinal_basis(y, np.asarray(self.knots_y), DEGREE[self.style])

    def matrix_x(self, x: Float[AnyArray, " n"]) -> Float[Array, "n kx"]:
        return cardinal_basis(x, np.asarray(self.knots_x), DEGREE[self.style])

    def evaluate(
        self,
        coefficients: Float[Array, "ky kx"],
        y: Float[AnyArray, " ny"],
        x: Float[AnyArray, " nx"],
    ) -> Float[Array, "ny nx"]:
        """The model on ``y × x``; ``AKIMA_SPLINE`` by Akima interpolation of the knot
        values (fitted with the natural cubic basis, `_model`)."""
        if self.style == "AKIMA_SPLINE":
            ty, tx = np.asarray(self.knots_y), np.asarray(self.knots_x)
            # akima_grid takes NumPy pixel grids as trace-time constants too.
            return akima_grid(coefficients, ty, tx, cast(Array, y), cast(Array, x))
        return super().evaluate(coefficients, y, x)

    @classmethod
    def from_fields(cls, shape: tuple[int, int], fields: dict[str, Any]) -> SplineBasis:
        knots_y, knots_x = (tuple(map(float, fields[k])) for k in ("knots_y", "knots_x"))
        return cls(shape, style=str(fields["style"]), knots_y=knots_y, knots_x=knots_x)

    def penalty_rows(self, dtype: Any) -> np.ndarray:
        """Second (degree 0: first) differences of the knot values along each axis."""
        ky, kx = self.coefficient_shape
        degree = DEGREE[self.style]
        dy, dx = difference_matrix(ky, degree), difference_matrix(kx, degree)
        rows = np.concatenate([np.kron(dy, np.eye(kx)), np.kron(np.eye(ky), dx)])
        return rows.astype(dtype)

    def constant_coefficients(self, dtype: Any) -> Float[Array, " K"]:
        """Every knot value 1 (the cardinal bases sum to 1)."""
        ky, kx = self.coefficient_shape
        return jnp.ones(ky * kx, dtype)

    def active_terms(
        self,
        config: MatchBackgroundsConfig,
        valid: Bool[Array, "ny nx"],
        design: Float[Array, "M K"] | None = None,
    ) -> ActiveTerms:
        """Every knot value (`all_terms_active`)."""
        return all_terms_active(valid, self.coefficient_shape)


_FAMILIES: dict[str, type[AbstractBasis]] = {"CHEBYSHEV": ChebyshevBasis, "SPLINE": SplineBasis}


def basis_from_fields(
    kind: str,
    shape: tuple[int, int],
    order_y: int = 0,
    order_x: int = 0,
    style: str = "",
    knots_y: tuple[float, ...] = (),
    knots_x: tuple[float, ...] = (),
) -> AbstractBasis:
    """The basis named by ``kind`` (``CHEBYSHEV`` or ``SPLINE``) from the fields of the
    model-file format (in the order of the former ``Basis`` record, so positional
    calls keep working); the fields of the other family are ignored."""
    if kind not in _FAMILIES:
        raise ValueError(f"kind must be one of {tuple(_FAMILIES)}, got {kind!r}")
    fields = dict(order_y=order_y, order_x=order_x, style=style, knots_y=knots_y, knots_x=knots_x)
    return _FAMILIES[kind].from_fields((int(shape[0]), int(shape[1])), fields)
