"""Tests of `jaxmatch._separable`: the separable product and trace-time constants.

`outer_sum(L, R)` must equal ``L @ R.T`` on both of its code paths (the written-out
sum for k <= UNROLL_MAX_TERMS, the matrix product above), under jit and vmap, with
derivatives that match central differences. Tolerances: float64 sums of k <= 40
products of O(1) numbers differ from NumPy's matmul by a few ulp, so 1e-13.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxmatch._separable import UNROLL_MAX_TERMS, constant_if_known, outer_sum


@pytest.mark.parametrize("k", [1, 5, UNROLL_MAX_TERMS, UNROLL_MAX_TERMS + 8])
def test_outer_sum_equals_the_matrix_product(k):
    rng = np.random.default_rng(k)
    left, right = rng.normal(size=(7, k)), rng.normal(size=(9, k))
    expected = left @ right.T
    got = jax.jit(outer_sum)(jnp.asarray(left), jnp.asarray(right))
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-13)
    # Constant right factor (a NumPy array), as the model evaluation passes it.
    got_const = jax.jit(lambda a: outer_sum(a, right))(jnp.asarray(left))
    np.testing.assert_allclose(got_const, expected, rtol=1e-13, atol=1e-13)


def test_outer_sum_vmap_equals_loop_and_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    left, right = jnp.asarray(rng.normal(size=(3, 6, 4))), jnp.asarray(rng.normal(size=(5, 4)))
    batched = jax.jit(jax.vmap(outer_sum, in_axes=(0, None)))(left, right)
    for i in range(3):
        np.testing.assert_allclose(batched[i], outer_sum(left[i], right), rtol=1e-13, atol=1e-13)
    check_grads(outer_sum, (left[0], right), order=1, modes=("fwd", "rev"))


def test_constant_if_known_runs_at_trace_time_only_without_tracers():
    calls, constant = [], []

    def basis(x):
        calls.append(1)
        return jnp.sin(x)

    @jax.jit
    def f(a, x):
        known = constant_if_known(basis, np.arange(3.0))
        traced = constant_if_known(basis, x)
        constant.extend(
            [not isinstance(known, jax.core.Tracer), isinstance(traced, jax.core.Tracer)]
        )
        return a + known + traced

    out = f(1.0, jnp.arange(3.0))
    np.testing.assert_allclose(out, 1.0 + 2 * np.sin(np.arange(3.0)), rtol=1e-15)
    # NumPy input: a concrete constant of the outer program; traced input: traced
    assert constant == [True, True]
    # the constant is one compiled program per function and shape: a new trace of
    # the outer function (another dtype of `a`) does not trace `basis` again for it
    n = len(calls)
    f(np.float32(1.0), jnp.arange(3.0))
    assert len(calls) == n + 1  # only the traced call re-traces


def test_constant_if_known_shares_one_program_between_equal_bases():
    from jaxmatch._model import Basis
    from jaxmatch._separable import _compiled

    def make():
        return Basis(
            "SPLINE",
            (40, 56),
            style="NATURAL_SPLINE",
            knots_y=(4.5, 13.5, 22.5, 31.5, 36.0),
            knots_x=tuple(np.arange(6) * 9.0 + 4),
        )

    first, second = make(), make()
    assert first == second and first is not second
    y = np.arange(40.0)
    a = constant_if_known(first.matrix_y, y)
    misses = _compiled.cache_info().misses
    b = constant_if_known(second.matrix_y, y)
    assert _compiled.cache_info().misses == misses  # the same compiled program
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, first.matrix_y(jnp.asarray(y)), rtol=1e-14, atol=1e-14)
