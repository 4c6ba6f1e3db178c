"""The stage records, the basis families and the status codes (the seams between
the modules), and the package's import layering."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_pair_batch
from tolerances import TOL

import jaxmatch as jm
from jaxmatch._basis import ChebyshevBasis, SplineBasis
from jaxmatch._fit import FitGrid, Hyperparameters, PreparedFit, hyperparameters, prepare_fit
from jaxmatch._plan import FitProblem, plan_fit
from jaxmatch._status import Status, diagnostic_status, fit_status
from jaxmatch._undersample import ActiveTerms

SHAPE = (48, 64)
CHEB = ChebyshevBasis(SHAPE, order_y=2, order_x=3)
SPLINE = SplineBasis(
    SHAPE, style="NATURAL_SPLINE", knots_y=(8.0, 24.0, 40.0), knots_x=(8.0, 32.0, 56.0)
)


def test_status_codes_are_the_documented_integers():
    assert [int(s) for s in Status] == [0, 1, 2, 3, 4, 5]
    assert jm.STATUS_MESSAGES[2] == Status.UNDERSAMPLED.message
    assert set(jm.STATUS_MESSAGES) == set(range(6))
    np.testing.assert_array_equal(jm.fitted(np.arange(6)), [True, False, False, False, True, True])


def test_status_ladder_and_nan_diagnostic():
    no_data = jnp.array([True, True, False, False, False])
    under = jnp.array([True, False, True, False, False])
    finite = jnp.array([False, False, True, False, True])
    status = fit_status(no_data, under, finite)
    np.testing.assert_array_equal(status, [1, 1, 2, 3, 0])
    rms = jnp.array([0.0, 0.0, 0.0, 0.0, jnp.nan])
    np.testing.assert_array_equal(diagnostic_status(status, rms), [1, 1, 2, 3, 4])


def test_check_result_names_each_failure():
    class Result:
        status = np.array([0, 4, 2])

    with pytest.raises(ValueError, match="exposure 2: too few usable bins"):
        jm.check_result(Result())


def test_basis_factory_builds_the_families():
    # Basis(kind, ...) as the single class of earlier versions (model files use it).
    assert jm.Basis("CHEBYSHEV", SHAPE, order_y=2, order_x=3) == CHEB
    spline = jm.Basis(
        "SPLINE",
        SHAPE,
        style="NATURAL_SPLINE",
        knots_y=SPLINE.knots_y,
        knots_x=SPLINE.knots_x,
        order_y=0,
        order_x=0,
    )
    assert spline == SPLINE and hash(spline) == hash(SPLINE)
    assert isinstance(CHEB, jm.Basis) and isinstance(SPLINE, jm.AbstractBasis)
    assert CHEB != ChebyshevBasis(SHAPE, order_y=3, order_x=2)
    assert (CHEB.kind, SPLINE.kind) == ("CHEBYSHEV", "SPLINE")
    assert (CHEB.style, SPLINE.order_y, SPLINE.order_x) == ("", 0, 0)
    with pytest.raises(ValueError, match="kind must be one of"):
        jm.Basis("POLYNOMIAL", SHAPE)


@pytest.mark.parametrize("basis", [CHEB, SPLINE], ids=["chebyshev", "spline"])
def test_constant_coefficients_evaluate_to_one(basis):
    c = basis.constant_coefficients(np.float64).reshape(basis.coefficient_shape)
    image = jm.BackgroundModel(c, basis).getImage()
    np.testing.assert_allclose(image, np.ones(SHAPE), **TOL["float64", "value"])
    # The roughness penalty does not see a constant (it is free in both families).
    np.testing.assert_allclose(
        basis.penalty_rows(np.float64) @ np.asarray(c).reshape(-1), 0.0, **TOL["float64", "value"]
    )


def test_penalty_rows_of_each_family():
    pq = np.add.outer(np.arange(3), np.arange(4)).reshape(-1)
    np.testing.assert_array_equal(CHEB.penalty_rows(np.float64), np.diag(pq))
    # Spline: second differences of the knot values along y (one per knot column),
    # then along x (one per knot row), on the p-major flattened coefficients.
    second = np.array([1.0, -2.0, 1.0])
    expected = np.concatenate([np.kron(second[None], np.eye(3)), np.kron(np.eye(3), second[None])])
    np.testing.assert_array_equal(SPLINE.penalty_rows(np.float64), expected)


def test_prepare_fit_returns_typed_records(rng):
    ref, sci, _ = make_pair_batch(rng, SHAPE, 1)
    config = jm.MatchBackgroundsConfig(usePolynomial=True, order=2, binSize=16)
    plan = plan_fit(config, SHAPE, config.binSize)
    hyper = hyperparameters(config, jnp.float64)
    bits = ref.bitmask(config.badMaskPlanes)
    fit = prepare_fit(ref, sci[0], hyper, bits, bits, config, plan, with_diff_im_var=True)
    assert isinstance(fit, PreparedFit) and isinstance(hyper, Hyperparameters)
    assert isinstance(fit.grid, FitGrid) and isinstance(fit.problem, FitProblem)
    assert isinstance(fit.terms, ActiveTerms)
    ny, nx = plan.grid_shape
    assert fit.grid.value.shape == (ny, nx) and fit.grid.diff.shape == SHAPE
    assert fit.problem.design.shape == (ny * nx, 9)
    assert isinstance(fit.problem.penalty, np.ndarray)  # a trace-time constant
    assert fit.terms.active.shape == (3, 3) and int(fit.terms.m) == min(ny, nx)
    # The dict keys of earlier versions still read the same values.
    assert fit["z"] is fit.grid.z and fit["under"] is fit.terms.undersampled
    assert hyper["roughness"] is hyper.roughness
    np.testing.assert_array_equal(fit["active"], np.asarray(fit.terms.active).reshape(-1))
    # The records pass through vmap (a batch of one), as match uses them.
    batched = jax.vmap(lambda s: prepare_fit(ref, s, hyper, bits, bits, config, plan).grid.value)(
        sci
    )
    np.testing.assert_allclose(batched[0], fit.grid.value, **TOL["float64", "transform"])


def test_import_layering():
    script = Path(__file__).resolve().parent.parent / ".ci" / "check_imports.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
