"""Tests of `jaxmatch._compile`: entry points compiled with vectorised CPU reductions.

The options may only change rounding (a different summation order, fused
multiply-adds), so every check compares against the plain `eqx.filter_jit` at a
tolerance of a few float64 rounding errors of the sums involved; and the wrapper
must keep working where JAX refuses compiler options (inside `jit`, `grad`, `vmap`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import TOL as TOLERANCES

from jaxmatch._compile import _under_a_transformation, filter_jit

TOL = TOLERANCES["float64", "reordered-sum"]


def _clipped_sum(x, c):
    """A masked, clipped moment: the kind of reduction the options vectorise."""
    d = x - c
    keep = jnp.isfinite(d) & (jnp.abs(d) < 2.0)
    return jnp.sum(jnp.where(keep, d * d, 0.0), axis=-1)


@pytest.fixture
def data(rng):
    x = rng.normal(size=(4, 4096))
    x[:, ::17] = np.nan  # masked pixels must stay masked: NaN is honoured
    return jnp.asarray(x), jnp.asarray(0.1)


def test_top_level_call_equals_the_plain_compilation(data):
    fast = filter_jit(_clipped_sum)
    plain = eqx.filter_jit(_clipped_sum)
    got, want = fast(*data), plain(*data)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, **TOL)


def test_calls_under_transformations_compile_without_options(data):
    """jit (with traced or constant inputs), grad and vmap all work and agree."""
    fast = filter_jit(_clipped_sum)
    x, c = data
    want = np.asarray(eqx.filter_jit(_clipped_sum)(x, c))
    np.testing.assert_allclose(jax.jit(fast)(x, c), want, **TOL)
    np.testing.assert_allclose(jax.jit(lambda: fast(x, c))(), want, **TOL)  # constants
    np.testing.assert_allclose(jax.vmap(fast, in_axes=(0, None))(x, c), want, **TOL)
    grad = jax.grad(lambda c: jnp.sum(fast(x, c)))(c)
    grad_plain = jax.grad(lambda c: jnp.sum(_clipped_sum(x, c)))(c)
    np.testing.assert_allclose(grad, grad_plain, **TOL)


def test_each_version_is_traced_once():
    """Top-level calls reuse the optimised program; traced calls use the plain one."""
    traces = []

    def f(x):
        traces.append(1)
        return jnp.sum(x * x)

    fast = filter_jit(f)
    x = jnp.arange(8.0)
    fast(x)
    fast(x + 1)
    assert len(traces) == 1
    jax.jit(fast)(x)  # the plain version, traced inside the outer jit
    jax.jit(fast)(x)
    assert len(traces) == 2


def test_under_a_transformation_is_detected():
    x = jnp.ones(3)
    assert not _under_a_transformation((x,), {})
    seen = []
    jax.jit(lambda y: seen.append(_under_a_transformation((y,), {})) or y)(x)
    jax.jit(lambda: seen.append(_under_a_transformation((x,), {})) or x)()  # constant input
    jax.grad(lambda y: seen.append(_under_a_transformation((y,), {})) or jnp.sum(y))(x)
    assert seen == [True, True, True]


def test_other_backends_compile_without_the_cpu_options(monkeypatch):
    """With a GPU/TPU default backend the plain version runs (the options are CPU's)."""
    traces = []

    def f(x):
        traces.append(1)
        return jnp.sum(x)

    fast = filter_jit(f)
    x = jnp.arange(4.0)
    fast(x)
    assert len(traces) == 1
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert float(fast(x)) == 6.0
    assert len(traces) == 2  # the other (plain) version was traced and run
