"""Shared annotation vocabulary.

``AnyArray``: a JAX array, or a NumPy array known at trace time (a pixel grid, a
penalty operator), which JAX then embeds as a constant of the compiled program.
Use it inside jaxtyping's dtype-and-shape hints: ``Float[AnyArray, " n"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from jaxtyping import Array

F = TypeVar("F", bound=Callable[..., Any])

AnyArray = Array | np.ndarray


def checks_own_arguments(fn: F) -> F:
    """Mark a public entry point that validates its own arguments, with errors that
    name the argument (``TypeError``/``ValueError``): run-time annotation checkers
    (jaxtyping's import hook, used by the test run) skip it, so users see those
    errors rather than the checker's. The functions it calls are still checked."""
    fn.__no_type_check__ = True  # type: ignore[attr-defined]
    return fn
