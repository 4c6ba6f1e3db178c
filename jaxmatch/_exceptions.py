"""jaxmatch's exception classes, catchable by the ``except`` clauses LSST code writes.

LSST's ``MatchBackgroundsTask`` is not consistent in the class it raises for one
kind of failure: too few bins raises `ValueError` on the polynomial path (its own
check) but `RuntimeError` on the spline path (afw's failure, re-raised); a fit
without overlap raises `ValueError` (polynomial) or `RuntimeError` (spline).
jaxmatch raises one class per kind of failure, and where LSST uses two classes
that class derives from both, so an ``except RuntimeError`` written for one LSST
path and an ``except ValueError`` written for the other both catch it::

    JaxmatchError(Exception)
    ├── FieldValidationError(ValueError, TypeError)   a config value is invalid
    ├── UndersampledError(RuntimeError, ValueError)   too few bins for the model
    └── MatchFailedError(RuntimeError, ValueError)    a fit failed (no overlap, ...)

`FieldValidationError` is pex_config's name and, as there, a `ValueError`; it is
also a `TypeError`, which jaxmatch raised for a value of the wrong type before.
"""

from __future__ import annotations

__all__ = ["JaxmatchError", "FieldValidationError", "UndersampledError", "MatchFailedError"]


class JaxmatchError(Exception):
    """Base class of every exception jaxmatch raises on purpose."""


class FieldValidationError(JaxmatchError, ValueError, TypeError):
    """A config field has an invalid value or type, or the config is frozen.

    The message names the field. A `ValueError` (as pex_config's class of this
    name) and a `TypeError`.
    """


class UndersampledError(JaxmatchError, RuntimeError, ValueError):
    """Too few bins for the requested model (order, interpolation style).

    LSST raises `RuntimeError` for the spline path (afw cannot build the
    interpolation: ``THROW_EXCEPTION``, or ``INCREASE_NXNYSAMPLE`` which afw's
    spline background does not support) and `ValueError` for the polynomial
    path; this class is both.
    """


class MatchFailedError(JaxmatchError, RuntimeError, ValueError):
    """One or more fits failed (no overlap, undersampled, non-finite model).

    LSST raises `ValueError` (polynomial path) or `RuntimeError` (spline path,
    re-raised from afw) for these; this class is both.
    """
