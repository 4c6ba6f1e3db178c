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
    seen = []

    def basis(x):
        y = jnp.sin(x)
        seen.append(isinstance(y, jax.core.Tracer))
        return y

    @jax.jit
    def f(a, x):
        return a + constant_if_known(basis, np.arange(3.0)) + constant_if_known(basis, x)

    out = f(1.0, jnp.arange(3.0))
    np.testing.assert_allclose(out, 1.0 + 2 * np.sin(np.arange(3.0)), rtol=1e-15)
    assert seen == [False, True]  # NumPy input: a constant; traced input: traced
