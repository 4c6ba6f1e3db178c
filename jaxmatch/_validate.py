"""Eager checks of `match`'s arguments and inputs, with messages naming the field.

Everything here runs on the host before tracing (values that are JAX tracers are
left to the caller: inside ``jit`` they cannot be inspected).
"""

from __future__ import annotations

import jax
import jax.core
import numpy as np

#: Largest number of spline knots (ky · kx) the dense solve accepts: its matrices
#: are (knots)² per exposure and the QR costs (knots)³ (4096 knots: 64 MiB each
#: in float32). Larger grids: raise binSize or splineKnotSpacing.
MAX_SPLINE_KNOTS = 4096


def check_hyperparameters(roughness=None, num_sigma_clip=None, clip_sharpness=None) -> None:
    """`ValueError` naming the argument when a given value is out of range:
    ``roughness >= 0``, ``num_sigma_clip > 0``, ``clip_sharpness > 0`` (all finite),
    as the config fields ``splineRoughness``, ``numSigmaClip``, ``clipSharpness``."""
    rules = (
        ("roughness", roughness, lambda v: v >= 0, ">= 0"),
        ("num_sigma_clip", num_sigma_clip, lambda v: v > 0, "> 0"),
        ("clip_sharpness", clip_sharpness, lambda v: v > 0, "> 0"),
    )
    for name, value, ok, rule in rules:
        if value is None or isinstance(value, jax.core.Tracer):
            continue
        v = np.asarray(value)
        if v.shape != ():
            raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
        v = float(v)
        if not np.isfinite(v) or not ok(v):
            raise ValueError(f"{name} must be finite and {rule}, got {v}")


def check_dtype(dtype) -> None:
    """`ValueError` when float64 is asked for but JAX runs without x64 (it would
    silently compute in float32)."""
    if dtype is None or np.dtype(dtype) != np.float64:
        return
    if not _x64_enabled():
        raise ValueError(
            "dtype='float64' needs 64-bit JAX, which is off: call "
            "jax.config.update('jax_enable_x64', True) (or set JAX_ENABLE_X64=1) before "
            "creating arrays, or use dtype='float32'"
        )


def check_knots(coefficient_shape: tuple[int, int]) -> None:
    """`ValueError` when a spline grid has more than `MAX_SPLINE_KNOTS` knots."""
    ky, kx = coefficient_shape
    if ky * kx > MAX_SPLINE_KNOTS:
        raise ValueError(
            f"the spline grid has {ky} x {kx} = {ky * kx} knots, more than the limit "
            f"{MAX_SPLINE_KNOTS} (dense matrices of (knots)^2 per exposure); use a larger "
            "binSize or splineKnotSpacing"
        )


def check_match_arguments(config, roughness, num_sigma_clip, clip_sharpness, plan) -> None:
    """All eager checks of `match` / `match_global` beyond the config's own."""
    check_hyperparameters(roughness, num_sigma_clip, clip_sharpness)
    check_dtype(config.dtype)
    if plan.basis.kind == "SPLINE":
        check_knots(plan.basis.coefficient_shape)


def _x64_enabled() -> bool:
    return bool(jax.config.jax_enable_x64)  # pyright: ignore[reportAttributeAccessIssue] (options are set at run time)
