"""Tests of `jaxmatch._solve.solve_least_squares` (docs/algorithm.md §6).

The reference is NumPy's SVD-based `lstsq` of the same stacked system
``[√w B; √μ D; √ε I]`` built independently over the active columns only (as
`tests/oracle.py` does). Checked three ways (shared/style.md): values, `jit` /
`vmap`, and derivatives (central differences, `jacfwd == jacrev`, closed form).
"""

import functools
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from tolerances import TOL

from jaxmatch._solve import _stacked, solve_least_squares
from jaxmatch._spline import difference_matrix

# Tolerances: tests/tolerances.py.
GRAD_EPS = 1e-6
M, K = 10, 6  # cells, coefficients: one compiled shape for most tests


def _reference(design, values, sqrt_weights, penalty, sqrt_mu, active, sqrt_eps):
    """NumPy lstsq of the stacked system over the active columns; 0 elsewhere."""
    design, penalty = np.asarray(design), np.asarray(penalty)
    act = np.asarray(active, bool)
    sw = np.asarray(sqrt_weights)
    rows = sw != 0  # zero-weight rows drop out of the problem entirely
    a = np.vstack(
        [
            sw[rows, None] * design[rows][:, act],
            float(sqrt_mu) * penalty[:, act],
            float(sqrt_eps) * np.eye(act.sum()),
        ]
    )
    b = np.concatenate([sw[rows] * np.asarray(values)[rows], np.zeros(len(a) - rows.sum())])
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    coef = np.zeros(len(act))
    coef[act] = sol
    return coef


def _problem(seed=0):
    """Design (M, K), values, √w with zeros, a second-difference penalty, one inactive column."""
    rng = np.random.default_rng(seed)
    design = rng.normal(size=(M, K))
    values = rng.normal(size=M)
    sqrt_weights = rng.uniform(0.5, 2.0, M)
    sqrt_weights[[2, 7]] = 0.0
    values[[2, 7]] = 1e6  # arbitrary (finite) values where the weight is 0
    penalty = difference_matrix(K, 3)
    active = np.ones(K, bool)
    active[4] = False
    return dict(
        design=design,
        values=values,
        sqrt_weights=sqrt_weights,
        penalty=penalty,
        sqrt_mu=np.float64(0.7),
        active=active,
        sqrt_eps=np.float64(np.sqrt(1e-10 * M)),
    )


def _jnp(problem):
    return {k: jnp.asarray(v) for k, v in problem.items()}


@functools.cache
def _solve_jit():
    return jax.jit(solve_least_squares)


@pytest.mark.parametrize("variant", ["weighted+penalty", "no penalty", "no ridge", "all active"])
def test_matches_numpy_lstsq(variant):
    p = _problem()
    if variant == "no penalty":
        p["penalty"] = np.zeros((0, K))
    if variant == "no ridge":
        p["sqrt_eps"] = np.float64(0.0)  # full rank: plain weighted least squares
    if variant == "all active":
        p["active"] = np.ones(K, bool)
    got = np.asarray(_solve_jit()(**_jnp(p)))
    np.testing.assert_allclose(got, _reference(**p), **TOL["float64", "solve"])
    # Inactive columns are exactly 0, not just small.
    assert np.all(got[~p["active"]] == 0.0)
    assert np.all(got[p["active"]] != 0.0)


def test_zero_weight_rows_drop_out():
    p = _problem()
    a = np.asarray(_solve_jit()(**_jnp(p)))
    p["values"] = np.where(p["sqrt_weights"] == 0, -3.0, p["values"])
    p["design"] = np.where((p["sqrt_weights"] == 0)[:, None], 1e3, p["design"])
    b = np.asarray(_solve_jit()(**_jnp(p)))
    np.testing.assert_allclose(a, b, **TOL["float64", "solve"])


def test_normal_equations_hold():
    # Independent of any solver: the residual of the stationarity condition
    # (Bᵀ W B + μ DᵀD + ε I) c = Bᵀ W z on the active block is at rounding level.
    p = _problem(3)
    c = np.asarray(_solve_jit()(**_jnp(p)))
    act = p["active"]
    b, d = p["design"][:, act], p["penalty"][:, act]
    w = p["sqrt_weights"] ** 2
    lhs = (
        b.T @ (w[:, None] * b)
        + p["sqrt_mu"] ** 2 * d.T @ d
        + p["sqrt_eps"] ** 2 * np.eye(act.sum())
    )
    rhs = b.T @ (w * np.where(w > 0, p["values"], 0.0))
    np.testing.assert_allclose(lhs @ c[act], rhs, rtol=0, atol=1e-11 * np.abs(rhs).max())


def _exact_ridge_solution(p):
    """The guarded problem's solution in exact rational arithmetic (normal equations).

    The floats are converted to `Fraction` exactly, so this is the true minimiser of
    the problem the solver is given, free of any rounding.
    """
    act = np.flatnonzero(p["active"])
    sw = [Fraction(float(v)) for v in p["sqrt_weights"]]
    rows = [i for i in range(M) if sw[i] != 0]
    a = [[sw[i] * Fraction(float(p["design"][i, j])) for j in act] for i in rows]
    z = [sw[i] * Fraction(float(p["values"][i])) for i in rows]
    eps = Fraction(float(p["sqrt_eps"])) ** 2
    n = len(act)
    aug = [
        [sum(r[u] * r[v] for r in a) + (eps if u == v else 0) for v in range(n)]
        + [sum(r[u] * zi for r, zi in zip(a, z, strict=True))]
        for u in range(n)
    ]
    for col in range(n):  # Gauss-Jordan; the matrix is positive definite
        for row in range(n):
            if row != col:
                f = aug[row][col] / aug[col][col]
                aug[row] = [x - f * y for x, y in zip(aug[row], aug[col], strict=True)]
    coef = np.zeros(K)
    coef[act] = [float(aug[i][n] / aug[i][i]) for i in range(n)]
    return coef


def test_rank_deficient_design_is_guarded():
    # Two equal columns (0, 1) and an all-zero column (3): without ε the system is
    # singular. With it, the exact minimiser gives the equal columns equal shares
    # and the empty one 0 (the minimum-norm solution, biased by O(ε/σ²) ≈ 1e-9).
    p = _problem(1)
    p["design"][:, 1] = p["design"][:, 0]
    p["design"][:, 3] = 0.0
    p["penalty"] = np.zeros((0, K))
    got = np.asarray(_solve_jit()(**_jnp(p)))
    assert np.all(np.isfinite(got))
    exact = _exact_ridge_solution(p)
    assert exact[0] == exact[1] and exact[3] == 0.0
    # Along the determined directions the answer is accurate; along the null
    # direction e0 - e1, which only ε holds, a backward-stable solver is off by up to
    # ~u ||A|| ||r|| / ε (a least-squares residual r couples to the perturbation
    # through 1/ε): that bound, with a factor 10, is the tolerance there.
    sw = p["sqrt_weights"]
    a = sw[:, None] * p["design"][:, p["active"]]
    r = sw * p["values"] - a @ exact[p["active"]]
    null_tol = (
        10
        * np.finfo(float).eps
        * np.linalg.norm(a, 2)
        * np.linalg.norm(r)
        / (float(p["sqrt_eps"]) ** 2)
    )
    assert null_tol < 1e-4  # the guard still gives a usable answer
    determined = lambda c: np.array([c[0] + c[1], c[2], c[3], c[5]])  # noqa: E731
    np.testing.assert_allclose(
        determined(got), determined(exact), **TOL["float64", "solve-guarded"]
    )
    assert abs(got[0] - got[1]) <= null_tol
    np.testing.assert_allclose(got, _reference(**p), rtol=0, atol=null_tol)
    # ε → 0 limit: the pseudo-inverse (minimum-norm) solution of the weighted problem.
    pinv = np.linalg.pinv(a) @ (sw * p["values"])
    np.testing.assert_allclose(
        determined(got), determined(np.insert(pinv, 4, 0.0)), rtol=1e-6, atol=1e-6
    )


def test_jit_and_vmap():
    p = _jnp(_problem())
    np.testing.assert_allclose(
        _solve_jit()(**p), solve_least_squares(**p), **TOL["float64", "solve-transform"]
    )
    rng = np.random.default_rng(5)
    values = jnp.asarray(rng.normal(size=(3, M)))
    sqrt_weights = jnp.asarray(np.abs(rng.normal(size=(3, M))) * (rng.random((3, M)) > 0.2))
    design = jnp.asarray(rng.normal(size=(3, M, K)))
    # Batched over design, values and weights (as `match` vmaps exposures).
    solve = lambda d, v, w: solve_least_squares(  # noqa: E731
        d, v, w, p["penalty"], p["sqrt_mu"], p["active"], p["sqrt_eps"]
    )
    batched = jax.jit(jax.vmap(solve))(design, values, sqrt_weights)
    singles = np.stack(
        [
            _solve_jit()(
                design[i],
                values[i],
                sqrt_weights[i],
                p["penalty"],
                p["sqrt_mu"],
                p["active"],
                p["sqrt_eps"],
            )
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(batched, singles, **TOL["float64", "solve-transform"])


def test_gradients():
    p = _jnp(_problem())
    nz = np.flatnonzero(np.asarray(p["sqrt_weights"]) != 0)

    # One function of every differentiable input; √w enters through its nonzero entries.
    @jax.jit
    def f(design, values, sw_nonzero, sqrt_mu):
        sw = p["sqrt_weights"].at[nz].set(sw_nonzero)
        return solve_least_squares(
            design, values, sw, p["penalty"], sqrt_mu, p["active"], p["sqrt_eps"]
        )

    args = (
        p["design"],
        p["values"] * (p["sqrt_weights"] != 0),
        p["sqrt_weights"][nz],
        p["sqrt_mu"],
    )
    # Reverse mode against central differences, forward mode against reverse mode.
    check_grads(f, args, order=1, modes=("rev",), eps=GRAD_EPS, **TOL["float64", "grad"])
    argnums = (0, 1, 2, 3)
    fwd = jax.jit(jax.jacfwd(f, argnums=argnums))(*args)
    rev = jax.jit(jax.jacrev(f, argnums=argnums))(*args)
    for jf, jr in zip(fwd, rev, strict=True):
        np.testing.assert_allclose(jf, jr, **TOL["float64", "solve-transform"])
        assert np.all(np.isfinite(jf))
    # The inactive coefficient is exactly 0 whatever the design.
    np.testing.assert_array_equal(fwd[0][~np.asarray(p["active"])], 0.0)
    # Closed form: c is linear in the values, c = H z with H the hat matrix
    # (AᵀA)⁻¹ Bᵀ W of the active block; H's columns for zero-weight rows are 0.
    act = np.asarray(p["active"])
    b = np.asarray(p["design"])[:, act]
    w = np.asarray(p["sqrt_weights"]) ** 2
    d = np.asarray(p["penalty"])[:, act]
    normal = (
        b.T @ (w[:, None] * b)
        + float(p["sqrt_mu"]) ** 2 * d.T @ d
        + float(p["sqrt_eps"]) ** 2 * np.eye(act.sum())
    )
    hat = np.linalg.solve(normal, b.T * w[None, :])
    jac = np.asarray(rev[1])
    np.testing.assert_allclose(jac[act], hat, **TOL["float64", "solve"])
    np.testing.assert_array_equal(jac[~act], 0.0)


_STACK_ARGS = ("design", "sqrt_weights", "penalty", "sqrt_mu", "active", "sqrt_eps")


def test_static_penalty_all_active_uses_an_equivalent_smaller_system():
    """A NumPy penalty with every term active (how `match` solves a spline fit) is
    solved through the eigen-factor of ``μ DᵀD + ε I``: the same solution and
    covariance as the stacked rows (TOL value: both are backward-stable QRs of
    systems with the same Gram matrix, cond ≲ 1e2), and the same derivative in μ
    (TOL grad, central differences)."""
    p = _problem(5)
    p["active"] = np.ones(K, bool)
    p["sqrt_eps"] = np.float64(0.05)
    traced = _jnp(p)
    static = dict(traced, penalty=p["penalty"], active=p["active"])  # NumPy: static

    def solve(args, sqrt_mu):
        return jax.jit(
            lambda mu: solve_least_squares(**dict(args, sqrt_mu=mu), with_covariance=True)
        )(sqrt_mu)

    stack = lambda a: _stacked(*(a[n] for n in _STACK_ARGS))[0].shape  # noqa: E731
    assert stack(static) == (M + K, K)  # the smaller system ...
    assert stack(traced) == (M + len(p["penalty"]) + K, K)  # ... instead of every row
    (c_static, cov_static), (c_rows, cov_rows) = solve(static, 0.7), solve(traced, 0.7)
    np.testing.assert_allclose(c_static, _reference(**p), **TOL["float64", "solve"])
    np.testing.assert_allclose(c_static, c_rows, **TOL["float64", "solve"])
    np.testing.assert_allclose(cov_static, cov_rows, **TOL["float64", "solve"])
    grad = jax.jacfwd(lambda mu: solve(static, mu)[0])(0.7)
    fd = (solve(static, 0.7 + GRAD_EPS)[0] - solve(static, 0.7 - GRAD_EPS)[0]) / (2 * GRAD_EPS)
    np.testing.assert_allclose(grad, fd, **TOL["float64", "grad"])
