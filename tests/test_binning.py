"""Tests of `jaxmatch._binning`: cell layouts and masked, clipped cell statistics.

Each function is checked three ways (shared/style.md): its value against the NumPy
oracle (`tests/oracle.py`) or a direct construction in float64, its invariance under
`jit` / `vmap`, and its derivatives against central differences and the closed form.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from jax.test_util import check_grads
from tolerances import TOL

from jaxmatch._binning import (
    bin_edges,
    cell_centres,
    cell_edges,
    grid_statistics,
    masked_statistic,
    power_sums,
    split_cells,
)

# Tolerances: tests/tolerances.py.
GRAD_EPS = 1e-5
STATISTICS = ("MEAN", "MEDIAN", "MEANCLIP")

# The value and derivative tests run jitted, with the structure static: one compilation
# per layout and statistic, rather than op-by-op dispatch compiling every primitive for
# every new shape. `test_jit_and_vmap_of_statistics` checks jitted == eager.
_masked = jax.jit(masked_statistic, static_argnums=(2, 3, 4, 5))


@functools.cache
def _grid_fn(edges_y, edges_x, statistic, num_sigma_clip, num_iter):
    ey, ex = (tuple(np.asarray(a) for a in e) for e in (edges_y, edges_x))
    return jax.jit(
        lambda img, u: grid_statistics(img, u, ey, ex, statistic, num_sigma_clip, num_iter)
    )


def _grid(image, usable, ey, ex, *stat):
    hashable = lambda e: tuple(tuple(a.tolist()) for a in e)  # noqa: E731
    return _grid_fn(hashable(ey), hashable(ex), *stat)(jnp.asarray(image), jnp.asarray(usable))


# --------------------------------------------------------------------------------
# Layouts (docs/algorithm.md §2 and §8)
# --------------------------------------------------------------------------------
LAYOUT_CASES = [
    (L, b)
    for L in (1, 2, 3, 5, 7, 10, 16, 17, 31, 64, 100, 257)
    for b in (1, 2, 3, 4, 5, 8, 16, 64, 256, 300)
]


@pytest.mark.parametrize(("length", "bin_size"), LAYOUT_CASES)
def test_cell_edges_match_oracle(length, bin_size):
    starts, sizes = cell_edges(length, bin_size)
    o_starts, o_sizes = oracle.cell_edges(length, bin_size)
    np.testing.assert_array_equal(starts, o_starts)
    np.testing.assert_array_equal(sizes, o_sizes)
    # Independent properties of afw's layout: ceil(L/b) contiguous cells covering
    # [0, L), sizes within one pixel of each other, all equal to b when b divides L.
    n = math.ceil(length / bin_size)
    assert len(starts) == n
    assert starts[0] == 0 and starts[-1] + sizes[-1] == length
    np.testing.assert_array_equal(starts[1:], starts[:-1] + sizes[:-1])
    assert sizes.min() >= 1 and sizes.max() - sizes.min() <= 1
    if length % bin_size == 0:
        np.testing.assert_array_equal(sizes, bin_size)
    if length <= bin_size:
        assert (starts.tolist(), sizes.tolist()) == ([0], [length])
    np.testing.assert_allclose(
        cell_centres(starts, sizes), oracle.cell_centres(o_starts, o_sizes), rtol=0, atol=0
    )


@pytest.mark.parametrize(("length", "bin_size"), LAYOUT_CASES)
def test_bin_edges_match_definition(length, bin_size):
    starts, sizes = bin_edges(length, bin_size)
    expected = [
        (i * bin_size, min((i + 1) * bin_size, length) - i * bin_size)
        for i in range(math.ceil(length / bin_size))
    ]
    assert list(zip(starts.tolist(), sizes.tolist(), strict=True)) == expected
    assert sizes.sum() == length


def test_layouts_refuse_a_non_positive_bin_size():
    for fn in (cell_edges, bin_edges):
        for b in (0, -4):
            with pytest.raises(ValueError, match="binSize"):
                fn(10, b)


# --------------------------------------------------------------------------------
# Test data: cells with 0, 1, 2, 3 and many usable pixels, NaN/inf where unusable,
# outliers for MEANCLIP, a constant cell and a cell whose clip would keep < 2 pixels.
# --------------------------------------------------------------------------------
def _grid_case(shape, bin_size, layout, seed, constant_cell=True):
    rng = np.random.default_rng(seed)
    h, w = shape
    edges = cell_edges if layout != "diagnostic" else bin_edges
    ey, ex = edges(h, bin_size), edges(w, bin_size)
    image = rng.normal(5.0, 1.0, shape)
    usable = rng.random(shape) > 0.15
    special = [
        lambda blk, ok: ok.fill(False),  # 0 usable
        lambda blk, ok: (ok.fill(False), ok.flat.__setitem__(0, True)),  # 1 usable
        lambda blk, ok: (
            ok.fill(False),
            ok.flat.__setitem__(0, True),
            ok.flat.__setitem__(ok.size - 1, True),
        ),  # 2 usable
        # constant: s = 0, clipping keeps the set
        (lambda blk, ok: blk.fill(2.5)) if constant_cell else (lambda blk, ok: None),
        # 3 usable {0, 0, 100}: a skewed tiny cell (the < 2 rule: test_masked_statistic_rows)
        lambda blk, ok: (
            ok.fill(False),
            [ok.flat.__setitem__(i, True) for i in (0, 1, 2)],
            [blk.flat.__setitem__(i, v) for i, v in zip((0, 1, 2), (0, 0, 100))],
        ),
        lambda blk, ok: blk.flat.__setitem__(1, 60.0),  # one far outlier
        lambda blk, ok: (blk.flat.__setitem__(0, -40.0), blk.flat.__setitem__(2, 25.0)),
    ]
    cells = [(i, j) for i in range(len(ey[0])) for j in range(len(ex[0]))]
    for (i, j), fn in zip(cells, special, strict=False):
        sl = (slice(ey[0][i], ey[0][i] + ey[1][i]), slice(ex[0][j], ex[0][j] + ex[1][j]))
        blk, ok = image[sl].copy(), usable[sl].copy()
        fn(blk, ok)
        image[sl], usable[sl] = blk, ok
    # Unusable pixels carry NaN / ±inf / huge values: they must never matter.
    junk = np.array([np.nan, np.inf, -np.inf, 1e300])
    image[~usable] = junk[rng.integers(0, 4, size=(~usable).sum())]
    return image, usable, ey, ex


def _oracle_grid(image, usable, ey, ex, statistic, clip, n_iter):
    ny, nx = len(ey[0]), len(ex[0])
    out = np.full((4, ny, nx), np.nan)
    for i in range(ny):
        for j in range(nx):
            sl = (slice(ey[0][i], ey[0][i] + ey[1][i]), slice(ex[0][j], ex[0][j] + ex[1][j]))
            vals = image[sl][usable[sl]]
            value, s, m = oracle.cell_statistic(vals, statistic, clip, n_iter)
            out[:, i, j] = value, s, m, len(vals)
    return out


GRIDS = {
    # (shape, binSize, layout): equal cells -> reshape path; others -> gather path
    "equal": ((8, 12), 4, "fit"),
    "uneven": ((11, 9), 4, "fit"),  # cells 4,4,3 x 5,4 (afw layout)
    "diagnostic": ((10, 7), 4, "diagnostic"),  # bins 4,4,2 x 4,3
}


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("statistic", STATISTICS)
def test_grid_statistics_match_oracle_cell_by_cell(grid, statistic):
    shape, b, layout = GRIDS[grid]
    clip, n_iter = (1.5, 3) if statistic == "MEANCLIP" else (3.0, 2)
    image, usable, ey, ex = _grid_case(shape, b, layout, seed=7)
    got = _grid(image, usable, ey, ex, statistic, clip, n_iter)
    expected = _oracle_grid(image, usable, ey, ex, statistic, clip, n_iter)
    value, s, m, n = (np.asarray(a) for a in got)
    np.testing.assert_array_equal(n, expected[3])
    np.testing.assert_array_equal(m, expected[2])
    np.testing.assert_allclose(value, expected[0], **TOL["float64", "value"])  # NaN == NaN
    np.testing.assert_allclose(s, expected[1], **TOL["float64", "value"])
    # The data do exercise what they are meant to: 0/1/2 usable pixels and clipping.
    assert {0, 1, 2} <= set(n.ravel().tolist())
    if statistic == "MEANCLIP":
        assert np.any(m < n)


def test_split_cells_reshape_and_gather_paths():
    for grid in GRIDS.values():
        shape, b, layout = grid
        image = np.arange(np.prod(shape), dtype=float).reshape(shape)
        ey, ex = (
            (cell_edges if layout == "fit" else bin_edges)(shape[0], b),
            (cell_edges if layout == "fit" else bin_edges)(shape[1], b),
        )
        split = jax.jit(lambda im: split_cells(im, ey, ex))
        cells, inside = (np.asarray(a) for a in split(jnp.asarray(image)))
        assert cells.shape == (len(ey[0]), ey[1].max(), len(ex[0]), ex[1].max())
        for i, (y0, ysz) in enumerate(zip(*ey, strict=True)):
            for j, (x0, xsz) in enumerate(zip(*ex, strict=True)):
                np.testing.assert_array_equal(inside[i, :, j, :].sum(), ysz * xsz)
                np.testing.assert_array_equal(
                    cells[i, :ysz, j, :xsz], image[y0 : y0 + ysz, x0 : x0 + xsz]
                )
                assert inside[i, :ysz, j, :xsz].all()
        if grid == GRIDS["equal"]:
            assert inside.all()


# Rows of a (R, n) array reduced over axis 1: the 1-D form of masked_statistic.
def _rows_case(seed, rows=6, n=9):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 2.0, (rows, n))
    usable = np.ones((rows, n), bool)
    usable[0] = False  # 0 usable
    usable[1, 1:] = False  # 1 usable
    usable[2, 2:] = False  # 2 usable
    usable[3, ::2] = False  # 4 usable (even n for the median)
    x[4, 3] = 30.0  # outlier
    usable[5, 3:] = False  # {0, 0, 100}: a cut below 0.577 s would keep 0 pixels
    x[5, :3] = 0.0, 0.0, 100.0
    x[~usable] = np.where(np.arange((~usable).sum()) % 2, np.nan, np.inf)
    return x, usable


@pytest.mark.parametrize(
    ("statistic", "clip"), [("MEAN", 2.0), ("MEDIAN", 2.0), ("MEANCLIP", 2.0), ("MEANCLIP", 0.5)]
)
def test_masked_statistic_rows_match_oracle(statistic, clip):
    x, usable = _rows_case(0)
    value, s, m, n = (
        np.asarray(a)
        for a in _masked(jnp.asarray(x), jnp.asarray(usable), (1,), statistic, clip, 3)
    )
    for r in range(x.shape[0]):
        ev, es, em = oracle.cell_statistic(x[r][usable[r]], statistic, clip, 3)
        assert (m[r], n[r]) == (em, usable[r].sum())
        np.testing.assert_allclose([value[r], s[r]], [ev, es], **TOL["float64", "value"])
    if statistic == "MEANCLIP":
        # Row 4: the outlier goes. Row 5 at 0.5 σ: the cut would keep no pixel, so the
        # previous set (all 3) is kept.
        assert m[4] < n[4]
        assert (m[5], n[5]) == (3, 3)
        if clip == 0.5:
            np.testing.assert_allclose(value[5], 100.0 / 3.0, rtol=1e-15)


def test_unknown_statistic_is_refused():
    with pytest.raises(ValueError, match="gridStatistic"):
        _masked(jnp.ones((6, 9)), jnp.ones((6, 9), bool), (1,), "MODE", 3.0, 2)  # at trace time


# --------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------
@pytest.mark.parametrize("statistic", ["MEDIAN", "MEANCLIP"])  # MEANCLIP runs MEAN's code too
def test_jit_and_vmap_of_statistics(statistic):
    shape, b, layout = GRIDS["uneven"]
    batch = [_grid_case(shape, b, layout, seed=s) for s in (1, 2, 3)]
    ey, ex = batch[0][2], batch[0][3]
    images = jnp.asarray(np.stack([c[0] for c in batch]))
    usables = jnp.asarray(np.stack([c[1] for c in batch]))
    f = functools.partial(
        grid_statistics,
        edges_y=ey,
        edges_x=ex,
        statistic=statistic,
        num_sigma_clip=2.0,
        num_iter=2,
    )
    jitted = jax.jit(f)
    singles = [jitted(images[k], usables[k]) for k in range(3)]
    batched = jax.jit(jax.vmap(f))(images, usables)  # jit: one compile, not op by op
    for q in range(4):
        np.testing.assert_allclose(
            batched[q], np.stack([s[q] for s in singles]), **TOL["float64", "transform"]
        )
    if statistic == "MEANCLIP":  # jit == eager (once: op-by-op dispatch is slow)
        eager = f(images[0], usables[0])
        for q in range(4):
            np.testing.assert_allclose(eager[q], singles[0][q], **TOL["float64", "transform"])


def test_vmap_of_masked_statistic_over_rows():
    x, usable = _rows_case(5)
    x, usable = jnp.asarray(x), jnp.asarray(usable)
    g = functools.partial(
        masked_statistic, axes=(0,), statistic="MEANCLIP", num_sigma_clip=2.0, num_iter=2
    )
    rows = jax.jit(jax.vmap(g))(x, usable)
    whole = _masked(x, usable, (1,), "MEANCLIP", 2.0, 2)  # the same reduction
    for q in range(4):
        np.testing.assert_allclose(rows[q], whole[q], **TOL["float64", "transform"])


# --------------------------------------------------------------------------------
# Derivatives
# --------------------------------------------------------------------------------
def _grad_case():
    """Rows of 8 pixels, 6 usable, distinct values, NaN/inf in the unusable two.

    Row 1 has a far outlier that MEANCLIP rejects; every |x - μ| stays away from the
    clip limit by far more than the finite-difference step.
    """
    x = np.array(
        [
            [0.3, -1.2, 0.8, 2.1, -0.4, 1.5, np.nan, np.inf],
            [0.1, 0.9, -0.7, 40.0, 0.5, -0.2, -np.inf, np.nan],
            [1.0, 3.0, -2.0, 0.5, -1.5, 2.5, np.nan, np.nan],
        ]
    )
    usable = np.isfinite(x)
    return x, usable


@pytest.mark.parametrize("statistic", ["MEAN", "MEANCLIP"])
def test_statistic_gradients(statistic):
    x, usable = _grad_case()
    u = jnp.asarray(usable)
    clip = 2.0

    @jax.jit  # check_grads calls it many times; compile once
    def f(x):
        value, s, _, _ = masked_statistic(x, u, (1,), statistic, clip, 2)
        return value, s

    x0 = jnp.asarray(np.where(usable, x, 0.0))
    # The kept set must not change under the finite-difference step.
    m0 = _masked(x0, u, (1,), statistic, clip, 2)[2]
    for sign in (-1, 1):
        xp = x0 + sign * 1e-3 * jnp.asarray(np.random.default_rng(0).normal(size=x.shape))
        np.testing.assert_array_equal(_masked(xp, u, (1,), statistic, clip, 2)[2], m0)
    if statistic == "MEANCLIP":
        assert np.asarray(m0).tolist() == [6, 5, 6]  # the outlier is clipped
    # Reverse mode against central differences (forward mode of the same moments:
    # test_soft_clip_gradients).
    check_grads(f, (x0,), order=1, modes=("rev",), eps=GRAD_EPS, **TOL["float64", "grad"])

    # Closed form: d value / d x_i = [i kept] / m; the gradient is finite, zero at the
    # unusable pixels, even though they hold NaN/inf (the double-where).
    jac = np.asarray(jax.jit(jax.jacrev(lambda x: f(x)[0]))(jnp.asarray(x)))
    assert np.all(np.isfinite(jac))
    for r in range(x.shape[0]):
        row = jac[r, r]
        np.testing.assert_array_equal(row[~usable[r]], 0.0)
        kept = row != 0
        assert kept.sum() == int(m0[r])
        np.testing.assert_allclose(row[kept], 1.0 / int(m0[r]), rtol=1e-15, atol=0)
        np.testing.assert_array_equal(jac[r, np.arange(3) != r], 0.0)


@pytest.mark.parametrize("statistic", ["MEDIAN", "MEANCLIP"])
def test_gradients_finite_with_nan_inputs_and_empty_cells(statistic):
    # Cells with 0 and 1 usable pixels have NaN value / s; a loss that drops them must
    # still have a finite gradient, zero at every unusable (NaN/inf) pixel. (MEAN: in
    # test_statistic_gradients; MEDIAN pads with inf before sorting.)
    shape, b, layout = GRIDS["uneven"]
    # (No zero-variance cell here: that case has its own test below.)
    image, usable, ey, ex = _grid_case(shape, b, layout, seed=11, constant_cell=False)
    u = jnp.asarray(usable)

    def loss(img):
        value, s, _, n = grid_statistics(img, u, ey, ex, statistic, 2.0, 2)
        ok = n >= 2
        return jnp.sum(jnp.where(ok, value, 0.0) ** 2 + jnp.where(ok, s, 0.0))

    g = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(image)))
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[~usable], 0.0)
    assert np.any(g[usable] != 0)


# --------------------------------------------------------------------------------
# The grid statistic and a pooled MEANCLIP in the same passes (the fit grid + diffImVar)
# --------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", ["equal", "uneven"])
@pytest.mark.parametrize("statistic", STATISTICS)
def test_grid_statistics_with_a_pooled_stream_equal_separate_computations(grid, statistic):
    """The grid part equals `grid_statistics`; the pooled part equals the oracle's
    MEANCLIP of every pooled-usable pixel (each pixel counted once, also when the
    cells are padded). Tolerance: TOL value (same float64 sums, other order)."""
    shape, b, layout = GRIDS[grid]
    image, usable, ey, ex = _grid_case(shape, b, layout, seed=5)
    rng = np.random.default_rng(6)
    pooled = rng.normal(50.0, 3.0, shape)
    pooled_ok = usable & (rng.random(shape) > 0.1)
    pooled[np.unravel_index(np.argmax(pooled_ok), shape)] = 400.0  # an outlier to clip
    pooled[~pooled_ok] = np.nan
    args = (jnp.asarray(image), jnp.asarray(usable), jnp.asarray(pooled), jnp.asarray(pooled_ok))
    grid_part, pooled_part = jax.jit(
        lambda x, u, y, v: grid_statistics(x, u, ey, ex, statistic, 2.0, 3, pooled=(y, v))
    )(*args)
    alone = _grid_fn(_freeze(ey), _freeze(ex), statistic, 2.0, 3)(args[0], args[1])
    for q in range(4):
        np.testing.assert_allclose(grid_part[q], alone[q], **TOL["float64", "value"])
    expected = oracle.cell_statistic(pooled[pooled_ok], "MEANCLIP", 2.0, 3)
    got = [float(pooled_part[q]) for q in range(3)]
    np.testing.assert_allclose(got, expected, **TOL["float64", "value"])
    assert float(pooled_part[3]) == pooled_ok.sum()
    assert got[2] < pooled_ok.sum()  # the outlier was clipped: the pooled clip really ran


def test_pooled_stream_given_as_terms_over_the_images_usable_pixels():
    """``pooled=((a, b), None)`` (as for diffImVar: reference + science variance): the
    MEANCLIP of ``a + b`` over the pixels where the (coded) image is usable and
    ``a + b`` is finite. The passes add the terms after taking the centre off ``a``,
    so the sums differ from the oracle's in rounding only: TOL value."""
    shape, b, layout = GRIDS["uneven"]
    image, usable, ey, ex = _grid_case(shape, b, layout, seed=7)
    rng = np.random.default_rng(8)
    first, second = rng.normal(30.0, 2.0, shape), rng.normal(20.0, 2.0, shape)
    first[rng.random(shape) < 0.05] = np.inf  # a non-finite variance: left out
    first[np.unravel_index(np.argmax(usable), shape)] = 500.0  # an outlier to clip
    coded = np.where(usable, image, np.nan)
    grid_part, pooled_part = jax.jit(
        lambda x, p, q: grid_statistics(x, None, ey, ex, "MEANCLIP", 2.0, 3, pooled=((p, q), None))
    )(jnp.asarray(coded), jnp.asarray(first), jnp.asarray(second))
    alone = _grid_fn(_freeze(ey), _freeze(ex), "MEANCLIP", 2.0, 3)(
        jnp.asarray(image), jnp.asarray(usable)
    )
    for q in range(4):
        np.testing.assert_allclose(grid_part[q], alone[q], **TOL["float64", "value"])
    total = first + second
    ok = usable & np.isfinite(total)
    expected = oracle.cell_statistic(total[ok], "MEANCLIP", 2.0, 3)
    got = [float(pooled_part[q]) for q in range(3)]
    np.testing.assert_allclose(got, expected, **TOL["float64", "value"])
    assert float(pooled_part[3]) == ok.sum() < usable.sum()
    assert got[2] < ok.sum()  # the outlier was clipped


def _freeze(edges):
    return tuple(tuple(int(v) for v in a) for a in edges)


def test_power_sums_derivatives_match_finite_differences():
    """`power_sums` is one variadic reduction with a hand-written JVP: forward and
    reverse mode against central differences (check_grads' default tolerance for
    float64, 1e-5 relative on second-order differences, via its own eps = 1e-6)."""
    rng = np.random.default_rng(2)
    w = (jnp.asarray(rng.random((3, 4, 5))), jnp.asarray(rng.random((3, 4, 5))))
    d = (jnp.asarray(rng.normal(size=(3, 4, 5))), jnp.asarray(rng.normal(size=(3, 4, 5))))
    f = lambda w, d: power_sums(w, d, (0, 2))  # noqa: E731
    sums = f(w, d)
    np.testing.assert_allclose(sums[4], np.sum(w[1] * d[1], axis=(0, 2)), rtol=1e-13)
    np.testing.assert_allclose(sums[2], np.sum(w[0] * d[0] ** 2, axis=(0, 2)), rtol=1e-13)
    check_grads(f, (w, d), order=2, modes=("fwd", "rev"))


# --------------------------------------------------------------------------------
# Smooth clipping (clipSharpness = β: the cut becomes sigmoid(β (numSigmaClip - |x-μ|/σ)))
# --------------------------------------------------------------------------------
def test_soft_clip_matches_oracle_and_tends_to_the_hard_clip():
    for grid in ("equal", "uneven"):
        shape, b, layout = GRIDS[grid]
        image, usable, ey, ex = _grid_case(shape, b, layout, seed=7)
        soft = jax.jit(
            lambda img, u, beta: grid_statistics(img, u, ey, ex, "MEANCLIP", 1.5, 3, beta)
        )
        got = soft(jnp.asarray(image), jnp.asarray(usable), jnp.asarray(3.0))  # β: array leaf
        ny, nx = len(ey[0]), len(ex[0])
        for i in range(ny):
            for j in range(nx):
                sl = (slice(ey[0][i], ey[0][i] + ey[1][i]), slice(ex[0][j], ex[0][j] + ex[1][j]))
                vals = image[sl][usable[sl]]
                expected = oracle.cell_statistic(vals, "MEANCLIP", 1.5, 3, clip_sharpness=3.0)
                np.testing.assert_allclose(
                    [got[0][i, j], got[1][i, j], got[2][i, j]],
                    expected,
                    **TOL["float64", "value"],
                )
                assert got[3][i, j] == len(vals)
    # β → ∞ gives the hard clip where no pixel sits near the limit: on _grad_case every
    # |x - μ| / σ is >= 0.04 away from numSigmaClip = 2, so at β = 1e3 the weights are
    # within e^-40 of 0/1.
    x, usable = _grad_case()
    x0, u = jnp.asarray(np.where(usable, x, 0.0)), jnp.asarray(usable)
    hard = _masked(x0, u, (1,), "MEANCLIP", 2.0, 2)
    soft = _masked(x0, u, (1,), "MEANCLIP", 2.0, 2, jnp.asarray(1e3))
    for q in range(3):
        np.testing.assert_allclose(soft[q], hard[q], **TOL["float64", "value"])


def test_soft_clip_gradients():
    # Differentiable in x, numSigmaClip and β everywhere (no threshold to avoid);
    # finite with NaN/inf in the unusable pixels. Forward mode (jacfwd) against central
    # differences along random directions (f and its Jacobian compile once each).
    x, usable = _grad_case()
    u = jnp.asarray(usable)

    @jax.jit
    def f(x, nsig, beta):
        value, s, m, _ = masked_statistic(x, u, (1,), "MEANCLIP", nsig, 2, beta)
        return jnp.stack([value, s, m])

    x0 = jnp.asarray(np.where(usable, x, 0.0))
    nsig, beta = jnp.asarray(1.5), jnp.asarray(2.0)
    jac = [np.asarray(j) for j in jax.jit(jax.jacfwd(f, argnums=(0, 1, 2)))(x, nsig, beta)]
    for block in jac:
        assert np.all(np.isfinite(block))
    np.testing.assert_array_equal(jac[0][:, :, ~usable], 0.0)
    assert np.all(jac[1][0] != 0)  # d value / d numSigmaClip: really there
    rng = np.random.default_rng(1)
    for _ in range(3):
        v = [rng.normal(size=x.shape) * usable, rng.normal(), rng.normal()]
        plus = f(x0 + GRAD_EPS * v[0], nsig + GRAD_EPS * v[1], beta + GRAD_EPS * v[2])
        minus = f(x0 - GRAD_EPS * v[0], nsig - GRAD_EPS * v[1], beta - GRAD_EPS * v[2])
        fd = (np.asarray(plus) - np.asarray(minus)) / (2 * GRAD_EPS)
        ad = np.einsum("qrij,ij->qr", jac[0], v[0]) + jac[1] * v[1] + jac[2] * v[2]
        np.testing.assert_allclose(ad, fd, **TOL["float64", "grad"])


def test_gradient_through_floored_std_of_constant_cell_is_finite():
    x = jnp.full((4,), 2.5)
    u = jnp.ones((4,), bool)
    # e = max(s, eps) as in docs/algorithm.md §3: s = 0 < eps, so de/dx = 0 exactly.
    g = jax.jit(
        jax.grad(lambda x: jnp.maximum(masked_statistic(x, u, (0,), "MEAN", 3.0, 2)[1], 1e-8))
    )(x)
    np.testing.assert_array_equal(g, 0.0)


# --------------------------------------------------------------------------------
# float32
# --------------------------------------------------------------------------------
@pytest.mark.parametrize("statistic", ["MEAN", "MEANCLIP"])
def test_float32_large_sky_agrees_with_float64(statistic):
    # Noise of σ ≈ 1e-2 on a 1e4 sky. It is uniform on ±√3 σ, so no pixel lies near the
    # 3 σ clip limit: float32 (ulp 1e-3 = 0.1 σ here) cannot place pixels that close to
    # the limit on the same side as float64, which is a float32 limit, not an error.
    rng = np.random.default_rng(3)
    noise = rng.uniform(-math.sqrt(3.0), math.sqrt(3.0), (2, 16, 2, 16)) * 1e-2
    x32 = (1e4 + noise).astype(np.float32)
    x32[0, 3, 1, 5] = 1e4 + 1.0  # a 100 σ outlier: MEANCLIP must drop it in both dtypes
    usable = rng.random(x32.shape) > 0.1
    usable[0, 3, 1, 5] = True
    x32[~usable] = np.nan
    x64 = x32.astype(np.float64)  # the same (rounded) inputs
    u = jnp.asarray(usable)
    v32, s32, m32, n32 = _masked(jnp.asarray(x32), u, (1, 3), statistic, 3.0, 2)
    v64, s64, m64, _ = _masked(jnp.asarray(x64), u, (1, 3), statistic, 3.0, 2)
    assert v32.dtype == jnp.float32 and s32.dtype == jnp.float32
    np.testing.assert_array_equal(m32, m64)
    if statistic == "MEANCLIP":
        assert m32[0, 1] < n32[0, 1]  # the outlier was clipped
    np.testing.assert_allclose(v32, v64, **TOL["float32", "mean"])
    np.testing.assert_allclose(s32, s64, **TOL["float32", "std"])
    # The test has teeth: the one-pass variance E[x²] - E[x]² in float32 is useless here.
    flat = x32[1, :, 0, :][usable[1, :, 0, :]]
    one_pass = np.mean(flat * flat, dtype=np.float32) - np.mean(flat, dtype=np.float32) ** 2
    assert abs(np.sqrt(abs(one_pass)) / float(s64[1, 0]) - 1) > 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_order_keys_sort_like_the_floats_and_invert_exactly(dtype):
    """The MEDIAN's integer keys: sorting them sorts the floats (negative, ±0,
    subnormal, huge, ±inf), and the map is its own inverse (bit-exact values)."""
    from jax import lax

    from jaxmatch._binning import (
        _flip_negative,
        _float_of_unsigned_key,
        _order_keys,
        _unsigned_keys,
    )

    info = np.finfo(dtype)
    special = [-np.inf, -info.max, -1.5, -info.tiny / 4, -0.0, 0.0, info.tiny / 4, 2.0]
    special += [info.max, np.inf]
    x = np.concatenate([np.asarray(special, dtype), np.random.default_rng(0).normal(size=200)])
    x = x.astype(dtype)
    keys = np.asarray(_order_keys(jnp.asarray(x)))
    order = np.argsort(keys, kind="stable")
    np.testing.assert_array_equal(x[order], np.sort(x))
    back = lax.bitcast_convert_type(_flip_negative(jnp.asarray(keys)), x.dtype)
    np.testing.assert_array_equal(np.asarray(back).view(np.uint8), x.view(np.uint8))
    # The unsigned form used by the digit search orders the same and inverts too.
    ukeys = _unsigned_keys(jnp.asarray(x))
    np.testing.assert_array_equal(x[np.argsort(np.asarray(ukeys), kind="stable")], np.sort(x))
    back = _float_of_unsigned_key(ukeys, x.dtype)
    np.testing.assert_array_equal(np.asarray(back).view(np.uint8), x.view(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_median_is_exact_on_awkward_rows(dtype):
    """MEDIAN (found digit by digit on integer keys, no sort) equals NumPy's median
    exactly: rows with ties, ±0, subnormals, huge values, usable ±inf, NaN/inf
    behind the mask, and 0, 1, 2, 3 and many usable entries."""
    info = np.finfo(dtype)
    rng = np.random.default_rng(3)
    width = 40
    rows, masks = [], []

    def add(values, usable=None):
        row = np.full(width, np.nan, dtype)
        row[: len(values)] = values
        ok = np.zeros(width, bool)
        ok[: len(values)] = True if usable is None else usable
        rows.append(row)
        masks.append(ok)

    add([])  # n = 0
    add([3.5])
    add([-0.0, 0.0])
    add([info.tiny / 4, -info.tiny / 4, 0.0])
    add([info.max, -info.max, info.max, 1.0])
    add([np.inf, 1.0, 2.0])  # a usable inf
    add([-np.inf, np.inf])  # the middle pair averages to NaN, as in NumPy
    add(np.round(rng.normal(size=width) * 2))  # many ties
    add(rng.normal(size=width - 1) * 1e3)  # odd n
    add(rng.normal(size=width), rng.random(width) > 0.4)  # masked, even or odd
    add(np.full(width, np.inf), np.arange(width) < 5)  # inf behind the mask
    x, u = np.asarray(rows, dtype), np.asarray(masks)
    got = np.asarray(_masked(jnp.asarray(x), jnp.asarray(u), (1,), "MEDIAN", 3.0, 2)[0])
    with np.errstate(invalid="ignore"):
        want = np.array([np.median(r[m]) if m.any() else np.nan for r, m in zip(x, u)])
    np.testing.assert_array_equal(got, want.astype(dtype))
