"""Test configuration: float64 on, run-time shape checks, and a PRNG fixture.

The modules in `CHECKED` are imported through jaxtyping's import hook with
beartype, so their jaxtyping annotations (dtypes and the shape names such as
``"N H W"``, consistent across the arguments and the return value of one call) are
checked whenever a test calls them; inside ``jit`` once, at trace time. A module
joins the list once its annotations pass (the others still annotate NumPy inputs
as ``Array`` in places).
"""

import os

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402

CHECKED = [
    "jaxmatch._akima",
    "jaxmatch._basis",
    "jaxmatch._batch",
    "jaxmatch._chebyshev",
    "jaxmatch._compile",
    "jaxmatch._diagnostics",
    "jaxmatch._evaluate",
    "jaxmatch._exposure",
    "jaxmatch._fit",
    "jaxmatch._global",
    "jaxmatch._match",
    "jaxmatch._model",
    "jaxmatch._plan",
    "jaxmatch._reference",
    "jaxmatch._resample",
    "jaxmatch._scaler",
    "jaxmatch._separable",
    "jaxmatch._solve",
    "jaxmatch._spline",
    "jaxmatch._status",
    "jaxmatch._taskpath",
    "jaxmatch._undersample",
]

with install_import_hook(CHECKED, "beartype.beartype"):
    import jaxmatch  # noqa: E402, F401


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most 4 (each holds its own compilations)."""
    return max(1, min(os.cpu_count() or 1, 4))


@pytest.fixture
def rng():
    """A seeded NumPy generator, so every test is reproducible."""
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _compiled_programs_released_between_tests():
    """Keep a test worker far from the kernel's memory-map limit, between tests.

    A worker compiles thousands of programs, and XLA's CPU compiler crashes the
    process past ``vm.max_map_count`` maps (see `jaxmatch._maplimit`). jaxmatch
    releases JAX's compiled programs at half the limit, at whichever call gets
    there; releasing here at a quarter, before a test starts, keeps that release
    out of the tests that count their compilations.
    """
    from jaxmatch._maplimit import release_programs_near_map_limit

    release_programs_near_map_limit(fraction=0.25)
