"""Tests of the model bases: `_chebyshev`, `_spline` and `_model` (evaluation).

Checked three ways (shared/style.md): values against NumPy / the oracle
(`tests/oracle.py`) / SciPy in float64, invariance under `jit` / `vmap`, and
derivatives against central differences and closed forms. Everything heavier than
a few operations is jitted once per test: op-by-op dispatch of the spline code
compiles every primitive for every new shape and is several times slower.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from jax.test_util import check_grads
from numpy.polynomial import chebyshev as npcheb
from scipy.interpolate import Akima1DInterpolator
from tolerances import TOL

from jaxmatch._chebyshev import chebyshev_matrix, term_mask, to_unit_interval
from jaxmatch._model import BackgroundModel, Basis
from jaxmatch._spline import cardinal_basis, difference_matrix, knots

# Tolerances: tests/tolerances.py.
GRAD_EPS = 1e-5


@functools.cache
def _basis_fn(t: tuple[float, ...], degree: int):
    """`cardinal_basis` on fixed knots, jitted once."""
    return jax.jit(lambda x: cardinal_basis(x, np.asarray(t), degree))


# --------------------------------------------------------------------------------
# Chebyshev (docs/algorithm.md §5)
# --------------------------------------------------------------------------------
T_POINTS = np.concatenate([np.linspace(-1.0, 1.0, 9), [-1.3, -0.999, 0.123, 1.25]])


@pytest.mark.parametrize("order", [0, 1, 2, 5, 8])
def test_chebyshev_matrix_matches_chebvander(order):
    got = np.asarray(chebyshev_matrix(jnp.asarray(T_POINTS), order))
    assert got.shape == (len(T_POINTS), order + 1)
    np.testing.assert_allclose(got, npcheb.chebvander(T_POINTS, order), **TOL["float64", "value"])
    np.testing.assert_allclose(
        got, oracle.chebyshev_matrix(T_POINTS, order), **TOL["float64", "value"]
    )
    # And from the definition T_k(cos θ) = cos kθ on [-1, 1].
    inside = np.abs(T_POINTS) <= 1
    theta = np.arccos(T_POINTS[inside])
    np.testing.assert_allclose(
        got[inside], np.cos(np.outer(theta, np.arange(order + 1))), rtol=0, atol=1e-13
    )


def test_unit_interval_maps_the_pixel_box_onto_minus_one_one():
    got = to_unit_interval(jnp.asarray([-0.5, 3.5, 8.5, 0.0]), 9)
    np.testing.assert_allclose(got, [-1.0, -1.0 / 9.0, 1.0, -8.0 / 9.0], rtol=0, atol=1e-15)


@pytest.mark.parametrize("order", range(7))
def test_term_mask(order):
    total = term_mask(order, order, "TOTAL")
    assert total.shape == (order + 1, order + 1)
    assert total.sum() == (order + 1) * (order + 2) // 2
    p, q = np.indices(total.shape)
    np.testing.assert_array_equal(total, p + q <= order)
    tensor = term_mask(order, order + 2, "TENSOR")
    assert tensor.shape == (order + 1, order + 3) and tensor.all()


def test_term_mask_refuses_unknown_terms():
    with pytest.raises(ValueError, match="chebyshevTerms"):
        term_mask(2, 2, "FULL")


def test_chebyshev_transforms_and_derivative():
    order = 5
    t = jnp.asarray(T_POINTS)
    f = lambda t: chebyshev_matrix(t, order)  # noqa: E731
    np.testing.assert_allclose(jax.jit(f)(t), f(t), **TOL["float64", "transform"])
    batch = jnp.stack([t, 0.5 * t, -t])
    np.testing.assert_allclose(
        jax.jit(jax.vmap(f))(batch),
        np.stack([f(b) for b in batch]),
        **TOL["float64", "transform"],
    )
    check_grads(
        jax.jit(f), (t,), order=1, modes=("fwd", "rev"), eps=GRAD_EPS, **TOL["float64", "grad"]
    )
    # Closed form: d T_k / dt = k U_{k-1}(t), i.e. numpy's chebder; the matrix acts
    # point by point, so a unit tangent gives every point's derivative at once.
    _, dt = jax.jvp(f, (t,), (jnp.ones_like(t),))
    expected = np.stack(
        [npcheb.chebval(T_POINTS, npcheb.chebder(np.eye(order + 1)[k])) for k in range(order + 1)],
        axis=-1,
    )
    np.testing.assert_allclose(dt, expected, **TOL["float64", "value"])


# --------------------------------------------------------------------------------
# Spline knots, cardinal basis, difference matrix (docs/algorithm.md §5)
# --------------------------------------------------------------------------------
@pytest.mark.parametrize("n", range(1, 10))
@pytest.mark.parametrize("spacing", [1, 2, 3, 4, 9])
def test_knots(n, spacing):
    centres = 1.5 + 3.0 * np.arange(n) + 0.25 * (np.arange(n) == n - 1)  # last cell narrower
    got = knots(centres, spacing)
    np.testing.assert_allclose(got, oracle.spline_knots(centres, spacing), rtol=0, atol=1e-12)
    if spacing == 1:
        np.testing.assert_array_equal(got, centres)
    else:
        k = int(np.ceil((n - 1) / spacing)) + 1 if n > 1 else 1
        assert len(got) == k
        if k > 1:
            assert (got[0], got[-1]) == (centres[0], centres[-1])
            np.testing.assert_allclose(
                np.diff(got), (centres[-1] - centres[0]) / (k - 1), rtol=1e-12
            )


KNOTS = {
    "k1": np.array([3.0]),
    "k2": np.array([1.0, 4.0]),
    "k3": np.array([0.5, 2.5, 4.5]),
    "nonuniform": np.array([0.0, 0.7, 2.5, 3.0, 6.2, 7.0]),
}


def _points(t):
    """Points inside and outside the knots and on the knot midpoints."""
    lo, hi = t[0] - 2.3, t[-1] + 1.9
    grid = np.linspace(lo, hi, 23)
    mids = (t[1:] + t[:-1]) / 2.0
    return np.sort(np.concatenate([grid, mids, [t[0] - 0.01, t[-1] + 0.01]]))


@pytest.mark.parametrize("name", list(KNOTS))
@pytest.mark.parametrize("degree", [0, 1, 3])
def test_cardinal_basis_matches_oracle(name, degree):
    t = KNOTS[name]
    x = _points(t)
    both = np.asarray(_basis_fn(tuple(t), degree)(jnp.asarray(np.concatenate([x, t]))))
    got, at_knots = both[: len(x)], both[len(x) :]
    assert got.shape == (len(x), len(t))
    np.testing.assert_allclose(got, oracle.cardinal_basis(x, t, degree), **TOL["float64", "value"])
    np.testing.assert_allclose(
        at_knots, oracle.cardinal_basis(t, t, degree), **TOL["float64", "value"]
    )
    # Properties from the definition: the identity at the knots (cardinal), a
    # partition of unity, and for degrees 1 and 3 exact reproduction of linear
    # functions everywhere (the natural spline of linear data is that line, and the
    # linear extension continues it).
    np.testing.assert_allclose(at_knots, np.eye(len(t)), **TOL["float64", "value"])
    np.testing.assert_allclose(got.sum(axis=1), 1.0, **TOL["float64", "value"])
    if degree > 0 and len(t) > 1:
        np.testing.assert_allclose(got @ t, x, **TOL["float64", "value"])
    if degree == 0 and len(t) > 1:
        # A point on a boundary (knot midpoint) belongs to the upper knot.
        idx = np.searchsorted(x, (t[1:] + t[:-1]) / 2.0)
        np.testing.assert_array_equal(np.argmax(got[idx], axis=1), np.arange(1, len(t)))


def test_natural_spline_end_conditions_and_smoothness():
    # From autodiff of the basis itself: f'' = 0 at the end knots, f'' continuous
    # across the interior knots, f'' = 0 in the linear extension.
    t = KNOTS["nonuniform"]
    d2 = jax.jit(jax.vmap(jax.jacfwd(jax.jacfwd(lambda s: cardinal_basis(s[None], t, 3)[0]))))
    delta = 1e-7
    inner = t[1:-1]
    points = np.concatenate([[t[0], t[-1]], inner - delta, inner + delta, [t[0] - 1, t[-1] + 1]])
    second = np.asarray(d2(jnp.asarray(points)))
    at_ends, left, right, outside = np.split(second, [2, 2 + len(inner), 2 + 2 * len(inner)])
    np.testing.assert_allclose(at_ends, 0.0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(left, right, rtol=0, atol=1e-5)  # f''' δ ~ 1e-6 at most
    np.testing.assert_array_equal(outside, 0.0)
    assert np.abs(left).max() > 0.1  # the cubic part is really there


def test_cardinal_basis_refuses_degree_two():
    with pytest.raises(ValueError, match="degree"):
        _basis_fn(tuple(KNOTS["k3"]), 2)(jnp.asarray([1.0]))  # raised while tracing


@pytest.mark.parametrize("k", range(1, 7))
@pytest.mark.parametrize("degree", [0, 1, 3])
def test_difference_matrix(k, degree):
    order = 1 if degree == 0 else 2
    got = difference_matrix(k, degree)
    assert got.shape == (max(k - order, 0), k)
    np.testing.assert_array_equal(got, oracle.difference_matrix(k, order))
    # Annihilates polynomials of degree < order (constants; lines for order 2).
    np.testing.assert_array_equal(got @ np.ones(k), 0.0)
    if order == 2:
        np.testing.assert_array_equal(got @ np.arange(k, dtype=float), 0.0)


@pytest.mark.parametrize("degree", [1, 3])
def test_cardinal_basis_transforms_and_gradients(degree):
    t = KNOTS["nonuniform"]
    # Away from the knots (the basis is only piecewise smooth), inside and outside.
    x = jnp.asarray([-1.0, 0.3, 1.1, 2.8, 4.0, 6.6, 7.9])
    f = _basis_fn(tuple(t), degree)
    if degree == 1:  # jit == eager (once: op-by-op dispatch of the cubic code is slow)
        np.testing.assert_allclose(
            f(x), cardinal_basis(x, t, degree), **TOL["float64", "transform"]
        )
    batch = jnp.stack([x, x + 0.05, x - 0.05])
    np.testing.assert_allclose(
        jax.jit(jax.vmap(f))(batch),
        np.stack([f(b) for b in batch]),
        **TOL["float64", "transform"],
    )
    # Reverse mode against central differences; forward mode too for the cubic (the
    # linear one's forward mode is checked against its closed form below).
    modes = ("rev",) if degree == 1 else ("fwd", "rev")
    check_grads(f, (x,), order=1, modes=modes, eps=GRAD_EPS, **TOL["float64", "grad"])
    if degree == 1:
        # Closed form: the slopes of the hat functions, ±1/h on each segment.
        _, dx = jax.jvp(f, (x,), (jnp.ones_like(x),))
        a = np.clip(np.searchsorted(t, np.asarray(x), side="right") - 1, 0, len(t) - 2)
        expected = np.zeros((len(x), len(t)))
        h = t[a + 1] - t[a]
        expected[np.arange(len(x)), a] = -1 / h
        expected[np.arange(len(x)), a + 1] = 1 / h
        np.testing.assert_allclose(dx, expected, **TOL["float64", "value"])


# --------------------------------------------------------------------------------
# Model evaluation (docs/algorithm.md §7)
# --------------------------------------------------------------------------------
SHAPE = (7, 9)
YS, XS = np.arange(SHAPE[0], dtype=float), np.arange(SHAPE[1], dtype=float)
OFF_Y, OFF_X = np.array([-1.5, 0.25, 3.7, 7.4]), np.array([-2.0, 4.2, 8.6, 10.0])
SPLINE_KNOTS = ((0.5, 2.5, 4.0, 6.0), (0.0, 1.5, 3.5, 5.0, 8.0))
# The pixel grid reaches beyond the Akima knots on every side (extrapolation).
AKIMA_KNOTS = ((0.8, 1.5, 2.5, 4.0, 5.2), (0.6, 1.5, 3.5, 5.0, 6.5, 7.3))
KINDS = ["CHEBYSHEV", "CONSTANT", "LINEAR", "NATURAL_SPLINE", "AKIMA_SPLINE"]

_image = eqx.filter_jit(lambda m: m.getImage())
_evaluate = eqx.filter_jit(lambda m, y, x: m.evaluate(y, x))


def _basis(kind):
    if kind == "CHEBYSHEV":
        return Basis("CHEBYSHEV", SHAPE, order_y=2, order_x=3)
    k = AKIMA_KNOTS if kind == "AKIMA_SPLINE" else SPLINE_KNOTS
    return Basis("SPLINE", SHAPE, style=kind, knots_y=k[0], knots_x=k[1])


def _dense(kind, c, ys=YS, xs=XS):
    """The model in NumPy: Y C Xᵀ, or SciPy's Akima along y then x."""
    if kind == "CHEBYSHEV":
        v, u = 2 * (ys + 0.5) / SHAPE[0] - 1, 2 * (xs + 0.5) / SHAPE[1] - 1
        return npcheb.chebvander(v, 2) @ c @ npcheb.chebvander(u, 3).T
    if kind == "AKIMA_SPLINE":
        ty, tx = (np.asarray(k) for k in AKIMA_KNOTS)
        along_y = Akima1DInterpolator(ty, c, axis=0, extrapolate=True)(ys)
        return Akima1DInterpolator(tx, along_y, axis=1, extrapolate=True)(xs)
    degree = {"CONSTANT": 0, "LINEAR": 1, "NATURAL_SPLINE": 3}[kind]
    ty, tx = SPLINE_KNOTS
    return oracle.cardinal_basis(ys, ty, degree) @ c @ oracle.cardinal_basis(xs, tx, degree).T


def _coefficients(basis, seed, batch=()):
    c = np.random.default_rng(seed).normal(0.0, 2.0, batch + basis.coefficient_shape)
    if basis.style == "AKIMA_SPLINE":
        c[..., 2, :] = c[..., 1, :]  # a flat stretch: Akima's equal-slope special case
    return c


@pytest.mark.parametrize("kind", KINDS)
def test_model_equals_dense_product(kind):
    basis = _basis(kind)
    c = _coefficients(basis, seed=1)
    model = BackgroundModel(jnp.asarray(c), basis)
    tol = TOL["float64", "akima" if kind == "AKIMA_SPLINE" else "value"]
    image = np.asarray(_image(model))
    assert image.shape == SHAPE
    np.testing.assert_allclose(image, _dense(kind, c), **tol)
    # Off-grid points, outside the knots and beyond the image box (Akima: its
    # extrapolation is on the pixel grid already; one compilation less).
    if kind != "AKIMA_SPLINE":
        np.testing.assert_allclose(
            _evaluate(model, OFF_Y, OFF_X), _dense(kind, c, OFF_Y, OFF_X), **tol
        )


def test_akima_run_by_run_evaluation_equals_the_dense_hermite_form():
    """Pixel coordinates known at trace time are evaluated run by run (4 terms per
    pixel, `_akima._hermite_by_runs`); traced coordinates use the dense Hermite
    matrices. Both equal SciPy's Akima, on the sorted pixel grid (runs beyond the
    knots: extrapolation) and on unsorted coordinates (more runs than intervals)."""
    from jaxmatch._akima import _interval_runs, akima_grid

    ty, tx = (np.asarray(k) for k in AKIMA_KNOTS)
    c = _coefficients(_basis("AKIMA_SPLINE"), seed=5)
    unsorted = np.random.default_rng(6).permutation(np.linspace(-2.0, 9.5, 23))
    dense = jax.jit(lambda c, y, x: akima_grid(c, ty, tx, y, x))
    for xs in (XS, unsorted):
        runs_count = len(_interval_runs(xs, tx))
        assert runs_count == len(tx) - 1 if xs is XS else runs_count > len(tx) - 1
        runs = np.asarray(akima_grid(jnp.asarray(c), ty, tx, YS, xs))  # NumPy x: runs
        traced = np.asarray(dense(jnp.asarray(c), jnp.asarray(YS), jnp.asarray(xs)))
        np.testing.assert_allclose(runs, traced, **TOL["float64", "akima"])
        np.testing.assert_allclose(
            runs, _dense("AKIMA_SPLINE", c, YS, xs), **TOL["float64", "akima"]
        )


@pytest.mark.parametrize("cells", [(6, 16), (5, 20), (7, 15)])
def test_akima_block_by_block_evaluation_equals_runs_and_dense(cells, monkeypatch):
    """Equal cells of an even size put every half-cell block of pixels in one knot
    interval: the pixel grid is then evaluated block by block (one elementwise
    expression, `_akima._hermite_by_blocks`), equal to the run-by-run and the dense
    Hermite forms; odd cells (no common block of `MIN_BLOCK` pixels) take the runs."""
    import jaxmatch._akima as akima

    n, size = cells
    width = n * size
    knots = np.arange(n) * size + size / 2 - 0.5  # the fit grid's cell centres
    xs = np.arange(width, dtype=np.float64)
    block = akima._common_block(xs, knots)
    assert block == (size // 2 if size % 2 == 0 else 1)
    c = jnp.asarray(np.random.default_rng(n).normal(size=(n, n)))
    ys = np.arange(width, dtype=np.float64)
    image = np.asarray(akima.akima_grid(c, knots, knots, ys, xs))
    traced = jax.jit(lambda c, y, x: akima.akima_grid(c, knots, knots, y, x))
    dense = np.asarray(traced(c, jnp.asarray(ys), jnp.asarray(xs)))
    np.testing.assert_allclose(image, dense, **TOL["float64", "akima"])
    monkeypatch.setattr(akima, "MIN_BLOCK", width + 1)  # force the runs
    runs = np.asarray(akima.akima_grid(c, knots, knots, ys, xs))
    np.testing.assert_allclose(image, runs, **TOL["float64", "akima"])


@pytest.mark.parametrize("kind", ["CHEBYSHEV", "NATURAL_SPLINE", "AKIMA_SPLINE"])
def test_batched_model_jit_and_vmap(kind):
    # The singles reuse the compilations of test_model_equals_dense_product (same
    # basis and shapes); `BackgroundModel.evaluate` adds the batch axis with vmap.
    basis = _basis(kind)
    c = jnp.asarray(_coefficients(basis, seed=2, batch=(3,)))
    model = BackgroundModel(c, basis)
    singles = np.stack([_image(BackgroundModel(c[i], basis)) for i in range(3)])
    batched = _image(model)
    assert batched.shape == (3,) + SHAPE
    np.testing.assert_allclose(batched, singles, **TOL["float64", "transform"])
    np.testing.assert_allclose(_image(model[1]), singles[1], **TOL["float64", "transform"])
    if kind == "CHEBYSHEV":  # eager == jit, and an explicit vmap (the spline's basis
        # functions have their own eager / vmap checks above; eager Akima is slow)
        np.testing.assert_allclose(
            BackgroundModel(c[0], basis).getImage(), singles[0], **TOL["float64", "transform"]
        )
        vm = jax.jit(jax.vmap(lambda ci: BackgroundModel(ci, basis).getImage()))(c)
        np.testing.assert_allclose(vm, singles, **TOL["float64", "transform"])
    with pytest.raises(TypeError):
        BackgroundModel(c[0], basis)[0]


def _assert_grad_matches_central_differences(loss, x, n_dir=3, seed=0):
    """<∇L, v> == (L(x + εv) - L(x - εv)) / 2ε along random directions v.

    One compilation (value_and_grad) serves the gradient and the differences.
    """
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    g = np.asarray(value_and_grad(x)[1])
    rng = np.random.default_rng(seed)
    for _ in range(n_dir):
        v = rng.normal(size=np.shape(x))
        fd = value_and_grad(x + GRAD_EPS * v)[0] - value_and_grad(x - GRAD_EPS * v)[0]
        np.testing.assert_allclose(np.sum(g * v), fd / (2 * GRAD_EPS), **TOL["float64", "grad"])
    return g


def test_model_gradient_wrt_coefficients():
    # (The Akima model's gradient is checked through `match` in test_match.py.)
    kind = "NATURAL_SPLINE"
    basis = _basis(kind)
    c = jnp.asarray(_coefficients(basis, seed=3))
    weights = jnp.asarray(np.random.default_rng(4).normal(size=SHAPE))

    def loss(c):
        return jnp.sum(weights * BackgroundModel(c, basis).getImage() ** 2)

    g = _assert_grad_matches_central_differences(loss, c)
    # Linear model M = Y C Xᵀ: dL/dC = Yᵀ (2 w ∘ M) X.
    y = oracle.cardinal_basis(YS, SPLINE_KNOTS[0], 3)
    x = oracle.cardinal_basis(XS, SPLINE_KNOTS[1], 3)
    m = y @ np.asarray(c) @ x.T
    np.testing.assert_allclose(
        g, y.T @ (2 * np.asarray(weights) * m) @ x, **TOL["float64", "value"]
    )
