"""Chunked and sharded runs give the same result as one call on one device."""

import os
import subprocess
import sys
import textwrap

import numpy as np
from helpers import make_pair_batch

import jaxmatch as jm

CONFIG = jm.MatchBackgroundsConfig(binSize=16, interpStyle="NATURAL_SPLINE")


def test_chunks_equal_one_call():
    ref, sci, _ = make_pair_batch(np.random.default_rng(0), (48, 64), n_sci=5)
    whole = jm.match(ref, sci, CONFIG)
    chunked = jm.match(ref, sci, CONFIG, chunk_size=2)  # chunks of 2, 2, 1 (padded)
    for name in ("matched", "fitRMS", "matchedMSE", "diffImVar", "status", "grid_values"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))
    np.testing.assert_array_equal(chunked.model.coefficients, whole.model.coefficients)


SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np, sys
    sys.path.insert(0, {tests!r})
    from helpers import make_pair_batch
    import jaxmatch as jm
    assert len(jax.devices()) == 4, jax.devices()
    ref, sci, _ = make_pair_batch(np.random.default_rng(0), (48, 64), n_sci=6)
    config = jm.MatchBackgroundsConfig(binSize=16, interpStyle="NATURAL_SPLINE")
    one = jm.match(ref, sci, config)
    many = jm.match(ref, sci, config, shard=True)  # 6 exposures padded to 8 over 4 devices
    np.testing.assert_allclose(many.matched, one.matched, rtol=1e-12, atol=1e-12)
    c1, c4 = one.model.coefficients, many.model.coefficients
    np.testing.assert_allclose(c4, c1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(many.fitRMS, one.fitRMS, rtol=1e-12)
    print("sharded OK")
    """
)


def test_sharded_over_four_cpu_devices_equals_one_device():
    """4 host devices via XLA_FLAGS (set before JAX starts, so in a subprocess).
    Tolerance 1e-12: the same operations, only partitioned, in float64."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    tests = os.path.dirname(__file__)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(tests=tests)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sharded OK" in proc.stdout
