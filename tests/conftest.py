"""Test configuration: float64 on, run-time shape checks, and a PRNG fixture.

The modules in `CHECKED` are imported through jaxtyping's import hook with
beartype, so their jaxtyping annotations (dtypes and the shape names such as
``"N H W"``, consistent across the arguments and the return value of one call) are
checked whenever a test calls them; inside ``jit`` once, at trace time. A module
joins the list once its annotations pass (the others still annotate NumPy inputs
as ``Array`` in places).
"""

import os

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402

CHECKED = [
    "jaxmatch._akima",
    "jaxmatch._basis",
    "jaxmatch._batch",
    "jaxmatch._chebyshev",
    "jaxmatch._compile",
    "jaxmatch._diagnostics",
    "jaxmatch._evaluate",
    "jaxmatch._exposure",
    "jaxmatch._fit",
    "jaxmatch._global",
    "jaxmatch._match",
    "jaxmatch._model",
    "jaxmatch._plan",
    "jaxmatch._reference",
    "jaxmatch._resample",
    "jaxmatch._scaler",
    "jaxmatch._separable",
    "jaxmatch._solve",
    "jaxmatch._spline",
    "jaxmatch._status",
    "jaxmatch._taskpath",
    "jaxmatch._undersample",
]

with install_import_hook(CHECKED, "beartype.beartype"):
    import jaxmatch  # noqa: E402, F401


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most 4 (each holds its own compilations)."""
    return max(1, min(os.cpu_count() or 1, 4))


@pytest.fixture
def rng():
    """A seeded NumPy generator, so every test is reproducible."""
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _compiled_programs_released_between_tests():
    """Keep a test worker far from the kernel's memory-map limit, between tests.

    A worker compiles thousands of programs, and XLA's CPU compiler crashes the
    process past ``vm.max_map_count`` maps (see `jaxmatch._maplimit`). jaxmatch
    releases JAX's compiled programs at half the limit, at whichever call gets
    there; releasing here at a quarter, before a test starts, keeps that release
    out of the tests that count their compilations.
    """
    from jaxmatch._maplimit import release_programs_near_map_limit

    release_programs_near_map_limit(fraction=0.25)


# The expensive tests: each took 14-84 s on a 2-core AMD EPYC machine without
# AVX-512 (2026-12-01, `--durations`), where the whole suite took 28-30 minutes.
# They are marked `slow` and left out of the default run (pyproject's addopts:
# `-m "not slow"`); `python -m pytest -q -n auto -m slow` runs them and `-m ""` runs
# everything. The default run keeps at least one test of every public path (engine,
# global, tuning, task, CLI, survey, Rubin, notebooks, float32 and gradients): the
# ones marked here repeat a path on more bases, scenes or notebooks.
SLOW_TESTS = frozenset(
    {
        "tests/test_autotune.py::test_autotune_spline_picks_bins_that_resolve_the_structure",
        "tests/test_autotune.py::test_cli_match_tune_writes_a_reusable_config",
        "tests/test_autotune.py::test_global_mode_autotune_and_task_tune",
        "tests/test_autotune.py::test_heldout_cell_loss_float32_matches_float64",
        "tests/test_autotune.py::test_heldout_cell_loss_is_near_one_at_the_truth_and_grows_when_underfitting",
        "tests/test_cli.py::test_one_truncated_file_among_ten_the_nine_are_written",
        "tests/test_cli.py::test_resume_keeps_only_outputs_of_this_very_run",
        "tests/test_float32.py::test_global_float32_equals_float64[akima_spline]",
        "tests/test_float32.py::test_global_float32_equals_float64[chebyshev1_total]",
        "tests/test_float32.py::test_global_float32_equals_float64[chebyshev4_tensor]",
        "tests/test_float32.py::test_global_float32_equals_float64[chebyshev4_total]",
        "tests/test_float32.py::test_global_float32_equals_float64[chebyshev6_tensor]",
        "tests/test_float32.py::test_global_float32_equals_float64[chebyshev8_total]",
        "tests/test_float32.py::test_global_float32_equals_float64[natural_spline]",
        "tests/test_float32.py::test_global_float32_equals_float64_with_64_exposures",
        "tests/test_float32.py::test_global_uncertainties_are_calibrated_in_float32",
        "tests/test_float32.py::test_single_reference_float32_equals_float64[akima_spline]",
        "tests/test_float32.py::test_single_reference_float32_equals_float64[chebyshev4]",
        "tests/test_float32.py::test_single_reference_float32_equals_float64[linear]",
        "tests/test_float32.py::test_single_reference_float32_equals_float64[natural_spline]",
        "tests/test_float32.py::test_squared_diagnostics_below_float32_range_are_nan_with_status_4",
        "tests/test_global.py::test_disconnected_groups_are_detected",
        "tests/test_global.py::test_global_beats_single_reference_on_a_dithered_patch[chebyshev2]",
        "tests/test_global.py::test_global_beats_single_reference_on_a_dithered_patch[chebyshev4]",
        "tests/test_global.py::test_global_beats_single_reference_on_a_dithered_patch[spline]",
        "tests/test_global.py::test_reference_pairs_only_equal_single_reference_mode",
        "tests/test_global.py::test_uncertainties_are_calibrated",
        "tests/test_maplimit.py::test_clearing_the_caches_gives_maps_back",
        "tests/test_maplimit.py::test_matching_many_new_shapes_stays_under_the_limit",
        "tests/test_match.py::test_gradients_match_finite_differences[fields1]",
        "tests/test_match.py::test_gradients_match_finite_differences[fields2]",
        "tests/test_match.py::test_recovers_simulated_backgrounds",
        "tests/test_match.py::test_undersampling_styles_match_oracle[INCREASE_NXNYSAMPLE]",
        "tests/test_notebooks.py::test_notebook_runs_on_tiny_inputs[fits_workflow.ipynb]",
        "tests/test_notebooks.py::test_notebook_runs_on_tiny_inputs[gpu_batching.ipynb]",
        "tests/test_notebooks.py::test_notebook_runs_on_tiny_inputs[lsst_usage.ipynb]",
        "tests/test_notebooks.py::test_notebook_runs_on_tiny_inputs[rubin.ipynb]",
        "tests/test_notebooks.py::test_notebook_runs_on_tiny_inputs[tuning.ipynb]",
        "tests/test_properties.py::test_agrees_with_the_oracle_on_random_masks[cheb-tensor-median-throw]",
        "tests/test_properties.py::test_agrees_with_the_oracle_on_random_masks[cheb3-reduce]",
        "tests/test_properties.py::test_agrees_with_the_oracle_on_random_masks[linear-knots2-unweighted]",
        "tests/test_properties.py::test_agrees_with_the_oracle_on_random_masks[natural-meanclip-rough]",
        "tests/test_properties.py::test_constant_offset_shifts_the_model[akima-meanclip]",
        "tests/test_properties.py::test_constant_offset_shifts_the_model[cheb-tensor]",
        "tests/test_properties.py::test_constant_offset_shifts_the_model[cheb3-median]",
        "tests/test_properties.py::test_constant_offset_shifts_the_model[natural-mean]",
        "tests/test_properties.py::test_float32_agrees_with_float64[cheb3-median]",
        "tests/test_properties.py::test_float32_agrees_with_float64[natural-mean]",
        "tests/test_properties.py::test_matching_an_exposure_to_itself_gives_a_zero_model[akima]",
        "tests/test_properties.py::test_matching_an_exposure_to_itself_gives_a_zero_model[cheb3-meanclip]",
        "tests/test_properties.py::test_result_does_not_depend_on_the_batch_order[natural-meanclip]",
        "tests/test_records.py::test_prepare_fit_returns_typed_records",
        "tests/test_reliability.py::test_float32_accuracy_with_a_large_sky",
        "tests/test_reliability.py::test_mixed_dtypes_promote_to_the_wider_one",
        "tests/test_reliability.py::test_tuning_and_loss_functions_never_change_their_inputs",
        "tests/test_reliability.py::test_tuning_gradients_are_finite_with_masked_nan_pixels",
        "tests/test_rubin.py::test_self_tuned_config_from_the_task_config",
        "tests/test_scaling.py::test_chunks_equal_one_call",
        "tests/test_scaling.py::test_sharded_over_four_cpu_devices_equals_one_device",
        "tests/test_survey.py::test_external_scheduler_and_worker",
        "tests/test_survey.py::test_killed_worker_loses_nothing",
        "tests/test_task.py::test_gen3_reference_selection_prefers_the_flattest_background",
        "tests/test_task.py::test_gradients_wrt_task_leaves_match_finite_differences",
        "tests/test_task.py::test_run_on_mixed_references_equals_pairwise_matching",
        "tests/test_task_chunks.py::test_chunked_run_equals_one_call_and_compiles_once[float64]",
        "tests/test_task_speed_paths.py::test_get_image_compiles_once_per_basis_and_keeps_gradients",
        "tests/test_task_speed_paths.py::test_match_list_equals_match_on_the_stack[cheb-median]",
        "tests/test_task_speed_paths.py::test_match_list_equals_match_on_the_stack[natural-meanclip]",
        "tests/test_task_speed_paths.py::test_match_list_float32_and_increase_nxnysample",
        "tests/test_task_speed_paths.py::test_run_failed_fit_has_no_matched_exposure_and_global_mode_fills_the_list",
        "tests/test_task_speed_paths.py::test_run_returns_the_engine_results[natural-meanclip]",
        "tests/test_tuning.py::test_global_mode_heldout_loss_and_tuning",
        "tests/test_tuning.py::test_soft_reference_tuning_and_grid_search",
        "tests/test_tuning.py::test_tune_finds_the_scanned_optimum_and_beats_the_default",
        "tests/test_tuning.py::test_tuning_gradient_is_finite_with_failed_or_degenerate_exposures[all_masked]",
        "tests/test_tuning.py::test_tuning_gradient_is_finite_with_failed_or_degenerate_exposures[constant]",
    }
)


def pytest_collection_modifyitems(config, items):
    """Mark the tests of `SLOW_TESTS` (node ids from the repository root) `slow`."""
    for item in items:
        if item.nodeid in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
