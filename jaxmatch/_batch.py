"""Batching of the science exposures: working dtype, padding, chunks and sharding.

The fit of one exposure is written for one exposure and ``vmap``-ed; this module
only decides how the batch reaches that compiled program: in which dtype, in how
many equally sized calls (so one compilation serves every chunk) and on which
devices. None of it changes a result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from ._config import MatchBackgroundsConfig
from ._exposure import Exposure

T = TypeVar("T")


def working_dtype(config: MatchBackgroundsConfig, *exposures: Exposure) -> Any:
    """The dtype of the computation: ``config.dtype``, else the images' common type."""
    if config.dtype is not None:
        return jnp.dtype(config.dtype)
    return jnp.result_type(*(e.image.dtype for e in exposures))


def cast_exposure(exposure: Exposure, dtype: Any) -> Exposure:
    """``exposure`` with image and variance in ``dtype`` (the mask is kept)."""
    if exposure.image.dtype == dtype and exposure.variance.dtype == dtype:
        return exposure
    return dataclasses.replace(
        exposure, image=exposure.image.astype(dtype), variance=exposure.variance.astype(dtype)
    )


def pad_batch(exposures: Exposure, size: int) -> Exposure:
    """Pad a batch to ``size`` exposures with copies of the first (results dropped)."""
    n = exposures.image.shape[0]
    if n == size:
        return exposures
    index = np.concatenate([np.arange(n), np.zeros(size - n, dtype=int)])
    return jax.tree.map(lambda a: a[index], exposures)


def take_rows(tree: T, stop: int) -> T:
    """The first ``stop`` entries along the leading axis of every leaf."""
    return jax.tree.map(lambda v: v[:stop], tree)


def in_chunks(run: Callable[[Exposure], T], science: Exposure, chunk_size: int | None) -> T:
    """``run`` over chunks of the science batch, concatenated (one compilation).

    Arguments:
        run: maps a batch ``(n, H, W)`` to a pytree of arrays with leading axis ``n``.
        science: the batch ``(N, H, W)``.
        chunk_size: exposures per call (the last chunk is padded); None: one call.
    """
    n = science.image.shape[0]
    if chunk_size is None or chunk_size >= n:
        return run(science)
    outs = []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sub = jax.tree.map(lambda a: a[start:stop], science)
        outs.append(take_rows(run(pad_batch(sub, chunk_size)), stop - start))
    return jax.tree.map(lambda *parts: jnp.concatenate(parts), *outs)


def sharded(run: Callable[[Exposure], T], devices: Sequence[Any]) -> Callable[[Exposure], T]:
    """Wrap ``run`` so the science batch is split over ``devices`` along N (a 1-D mesh;
    N is padded to a multiple of the device count)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(devices), ("exposures",))
    split = NamedSharding(mesh, PartitionSpec("exposures"))

    def run_sharded(science: Exposure) -> T:
        n = science.image.shape[0]
        size = -(-n // len(devices)) * len(devices)
        padded = jax.device_put(pad_batch(science, size), split)
        return take_rows(run(padded), n)

    return run_sharded
