"""Test configuration: float64 on, strict promotion, and a PRNG fixture."""

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    """A seeded NumPy generator, so every test is reproducible."""
    return np.random.default_rng(12345)
