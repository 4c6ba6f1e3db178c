"""`jaxmatch.retain_freed_memory` (glibc's malloc settings, opt-in).

Each check runs in a fresh interpreter: the settings are process-wide and act only
before JAX starts its backend.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from jaxmatch._allocator import ENV_VAR, is_glibc

needs_glibc = pytest.mark.skipif(not is_glibc(), reason="the settings are glibc's (Linux)")


def _python(code: str, *, retain: bool | None = None) -> str:
    """Run ``code`` in a fresh interpreter, warnings as errors; ``retain``: set the
    environment variable to 1 (True), 0 (False) or leave it unset (None). Returns
    stdout."""
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if retain is not None:
        env[ENV_VAR] = "1" if retain else "0"
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


@needs_glibc
def test_the_environment_variable_applies_the_settings_at_import_and_only_when_1():
    code = "import jaxmatch._allocator as a, jaxmatch; print(a.applied_from_environment)"
    assert _python(code, retain=True).split() == ["True"]
    assert _python(code, retain=False).split() == ["False"]
    assert _python(code).split() == ["False"]


@needs_glibc
def test_called_before_jax_starts_it_applies_silently_and_after_it_warns():
    code = """
        import warnings
        warnings.simplefilter("error")
        import jaxmatch, jax.numpy as jnp
        print(jaxmatch.retain_freed_memory())
        jnp.ones(3).block_until_ready()  # the backend starts
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print(jaxmatch.retain_freed_memory())
        print([str(w.category.__name__) for w in caught])
        print("first JAX computation" in str(caught[0].message))
    """
    assert _python(code).split() == ["True", "True", "['RuntimeWarning']", "True"]


# Page faults per `match` call of 16 science exposures of 1024² in float32: its
# matched images are one 64 MiB output, above glibc's largest mmap threshold, so
# without the settings every call maps fresh pages and faults each in (16 384 of
# 4 KiB); with them the freed buffer is reused (0 to ~3 300 measured).
_FAULTS = """
    import resource
    import jax
    import jaxmatch
    p = jaxmatch.simulate_patch(3, (1024, 1024), seed=1)
    ref = jaxmatch.Exposure(p.images[0], p.masks[0], p.variances[0])
    sci = jaxmatch.stack_exposures(
        [jaxmatch.Exposure(p.images[k], p.masks[k], p.variances[k]) for k in (1, 2) * 8]
    )
    config = jaxmatch.MatchBackgroundsConfig(binSize=128)
    for _ in range(2):
        jax.block_until_ready(jaxmatch.match(ref, sci, config).matched)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        jax.block_until_ready(jaxmatch.match(ref, sci, config).matched)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@needs_glibc
def test_retained_memory_spares_the_page_faults_of_a_large_output():
    without = float(_python(_FAULTS))
    if without < 1_000:  # e.g. transparent huge pages always on: 2 MiB per fault
        pytest.skip(f"{without:.0f} page faults per call without the settings: none to spare")
    retained = float(_python(_FAULTS, retain=True))
    # Without: the output's 16 384 pages each call (16 400–17 000 measured); with:
    # at most half of that (0–3 300 measured).
    assert retained <= 0.5 * without
