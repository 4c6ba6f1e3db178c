"""Per-exposure status codes, returned from inside ``jit`` (docs/algorithm.md §9).

A failing exposure must not sink the batch, so the compiled code never raises: it
returns one `Status` per exposure, NaN-s the failed exposure's coefficients and
diagnostics, and leaves its science image unchanged. `check_result` turns the codes
into LSST's eager ``ValueError`` outside a transformation.
"""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Int

from ._exceptions import MatchFailedError
from ._solve import ILL_CONDITIONED_MESSAGE, ROUNDOFF_LIMIT, warn_ill_conditioned


class Status(enum.IntEnum):
    """Outcome of one exposure's fit (the integer values are part of the API)."""

    SUCCESS = 0
    NO_OVERLAP = 1
    UNDERSAMPLED = 2
    NONFINITE = 3
    NAN_DIAGNOSTIC = 4
    ILL_CONDITIONED = 5

    @property
    def message(self) -> str:
        """The explanation `check_result` and the task log print."""
        return STATUS_MESSAGES[self]


SUCCESS, NO_OVERLAP, UNDERSAMPLED, NONFINITE, NAN_DIAGNOSTIC, ILL_CONDITIONED = Status

#: Explanation of each code, keyed by `Status` (equal to, and looked up by, its int).
STATUS_MESSAGES: dict[int, str] = {
    Status.SUCCESS: "success",
    Status.NO_OVERLAP: "no usable bin: no overlap with the reference (every pixel masked or NaN)",
    Status.UNDERSAMPLED: "too few usable bins for the requested order (undersampleStyle)",
    Status.NONFINITE: "the fit gave a non-finite model",
    Status.NAN_DIAGNOSTIC: (
        "fitted and applied, but a diagnostic is undefined (NaN): no usable pixel with a "
        "finite variance (diffImVar), no diagnostic bin with 2 usable pixels (fitRMS), or "
        "a squared diagnostic (matchedMSE, diffImVar) outside the dtype's normal range "
        "(float32: pixel noise below ~1e-19 or above ~1e19 image units; rescale the "
        "exposures, e.g. with ImageScaler, or use dtype='float64')"
    ),
    Status.ILL_CONDITIONED: ILL_CONDITIONED_MESSAGE,
}

#: The codes whose model is valid and applied (the others are failures).
FITTED: tuple[Status, ...] = (Status.SUCCESS, Status.NAN_DIAGNOSTIC, Status.ILL_CONDITIONED)


def fitted(status: ArrayLike) -> Bool[Array, "*N"]:
    """``True`` where the model is valid and was applied (a status in `FITTED`).

    Arguments:
        status: status codes, any shape.

    Returns:
        booleans of the same shape.
    """
    return jnp.isin(jnp.asarray(status), jnp.asarray([int(s) for s in FITTED]))


def fit_status(
    no_data: Bool[Array, "*N"], undersampled: Bool[Array, "*N"], finite: Bool[Array, "*N"]
) -> Int[Array, "*N"]:
    """The status of a solved fit, before the diagnostics: the first failure that
    applies, in the order ``NO_OVERLAP``, ``UNDERSAMPLED``, ``NONFINITE``.

    Arguments:
        no_data: no usable bin.
        undersampled: the undersampling rule flags the exposure (§5).
        finite: every fitted coefficient is finite.

    Returns:
        ``SUCCESS`` or a failure code, int32.
    """
    status = jnp.where(no_data, NO_OVERLAP, jnp.where(undersampled, UNDERSAMPLED, SUCCESS))
    status = jnp.where((status == SUCCESS) & ~finite, NONFINITE, status)
    return status.astype(jnp.int32)


def diagnostic_status(status: Int[Array, "*N"], *diagnostics: Array) -> Int[Array, "*N"]:
    """``NAN_DIAGNOSTIC`` where the fit succeeded and a diagnostic is NaN."""
    undefined = jnp.zeros(jnp.shape(status), bool)
    for value in diagnostics:
        undefined = undefined | jnp.isnan(value)
    return jnp.where((status == SUCCESS) & undefined, NAN_DIAGNOSTIC, status).astype(jnp.int32)


def final_status(
    status: Int[Array, "*N"], roundoff: Array, *diagnostics: Array
) -> Int[Array, "*N"]:
    """The status after the diagnostics, single-reference and global alike:
    `diagnostic_status`, then ``ILL_CONDITIONED`` where the fit succeeded and the
    solve's estimated rounding error ``roundoff`` (in units of its statistical 1σ)
    exceeds ``ROUNDOFF_LIMIT``."""
    status = diagnostic_status(status, *diagnostics)
    ill = (status == SUCCESS) & (roundoff > ROUNDOFF_LIMIT)
    return jnp.where(ill, ILL_CONDITIONED, status).astype(jnp.int32)


@runtime_checkable
class _HasStatus(Protocol):
    @property
    def status(self) -> Array: ...


def check_result(result: _HasStatus) -> None:
    """Raise `MatchFailedError` (a `ValueError` and a `RuntimeError`) naming each
    exposure whose fit failed, and why.

    Status 4 (``NAN_DIAGNOSTIC``: model valid, a diagnostic NaN) is not a failure;
    status 5 (``ILL_CONDITIONED``: model applied, rounding error too large at the
    working precision) is not a failure either, but warns (`RuntimeWarning`).

    Arguments:
        result: a `MatchResult` or `GlobalResult` (anything with ``status`` ``(N,)``).
    """
    status = np.asarray(result.status)
    warn_ill_conditioned(status)
    bad = np.flatnonzero(~np.asarray(fitted(status)))
    if bad.size:
        lines = [f"exposure {i}: {STATUS_MESSAGES[int(status[i])]}" for i in bad]
        raise MatchFailedError("background matching failed for " + "; ".join(lines))
