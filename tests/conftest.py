"""Test configuration: float64 on, run-time shape checks, and a PRNG fixture.

Every function and dataclass of `jaxmatch` is imported through jaxtyping's import
hook with beartype, so the jaxtyping annotations (dtypes and the shape names such
as ``"N H W"``, consistent across the arguments and the return value of one call)
are checked whenever a test calls them. Inside ``jit`` they are checked once, at
trace time.
"""

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402

with install_import_hook("jaxmatch", "beartype.beartype"):
    import jaxmatch  # noqa: E402, F401


@pytest.fixture
def rng():
    """A seeded NumPy generator, so every test is reproducible."""
    return np.random.default_rng(12345)
