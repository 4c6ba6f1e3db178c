"""The task's batched fit: a list of exposures in, models, their images and the
matched images out, from one compiled program.

`MatchBackgroundsTask.run` holds its exposures as a Python list (each read or
built on its own). Stacking them into an ``(N, H, W)`` batch before calling
`jaxmatch.match` would copy every image, mask and variance plane once more, and
evaluating each returned model afterwards (``getImage()``) would compute every
model image a second time. Here the list goes into one compiled program that
fits it as `match` fits a batch (on the CPU one exposure per step of a compiled
loop, `match_sequence`, so that no stacked copy is written; elsewhere stacked
inside the program and vectorised, `LOOP_BACKENDS`) and returns, per exposure,
its own buffers: the model image and the matched image, both computed in the
pass that forms ``sci + model`` (on the CPU the matched images each straight
into a buffer of its own, the model images as one ``(N, H, W)`` batch split into
views). The diagnostics come back to the host once, as NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.core
import numpy as np
from jaxtyping import Array, Float, Int

from ._batch import working_dtype
from ._compile import filter_jit
from ._custom_types import AnyArray, checks_own_arguments
from ._evaluate import grid_image
from ._exposure import Exposure, check_stackable, stack_exposures
from ._fit import hyperparameters
from ._maskbits import traced_mask_bits, with_canonical_planes
from ._match import match, match_batch, match_sequence
from ._model import BackgroundModel
from ._plan import plan_fit


class EvaluatedModel(BackgroundModel):
    """A `BackgroundModel` that carries its model image (computed by the fit).

    ``getImage()`` returns ``image`` ``(*batch, H, W)`` without evaluating the model
    again; everything else (coefficients, basis, ``evaluate(y, x)`` at other
    pixels) is that of the plain model.
    """

    image: Float[Array, "*batch H W"]

    def evaluate(self, y=None, x=None) -> Float[Array, "*batch ny nx"]:
        """The model at pixel rows ``y`` × columns ``x`` (default: the stored image)."""
        if y is None and x is None:
            return self.image
        return BackgroundModel(self.coefficients, self.basis).evaluate(y, x)

    def __getitem__(self, index) -> EvaluatedModel:
        if self.coefficients.ndim <= 2:
            raise TypeError("a single model cannot be indexed")
        return EvaluatedModel(self.coefficients[index], self.basis, self.image[index])


class ListFit(NamedTuple):
    """Per-exposure results of `match_list` (host arrays for the scalars).

    ``models[k]``: an `EvaluatedModel` ``(ky, kx)`` (NaN coefficients where the fit
    failed); ``matched[k]``: ``sci + model`` ``(H, W)`` in the exposure's dtype (the
    science image where the fit failed); ``status``, ``fitRMS``, ``matchedMSE``,
    ``diffImVar``: NumPy ``(N,)``.
    """

    models: list[EvaluatedModel]
    matched: list[Array]
    status: np.ndarray
    fitRMS: np.ndarray
    matchedMSE: np.ndarray
    diffImVar: np.ndarray


class Diagnostics(NamedTuple):
    """The per-exposure scalars of a list fit, ``(N,)`` each (device or host arrays)."""

    status: Int[AnyArray, " N"]
    fitRMS: Float[AnyArray, " N"]
    matchedMSE: Float[AnyArray, " N"]
    diffImVar: Float[AnyArray, " N"]

    @classmethod
    def of(cls, result: Any) -> Diagnostics:
        """The four fields of a `MatchResult` or `SequenceMatch`."""
        return cls(*(getattr(result, name) for name in cls._fields))


#: Backends on which the list is fitted by a loop over its exposures
#: (`match_sequence`) rather than stacked and vectorised (`match_batch`): on the CPU
#: the stacked copy costs more than the loop; on an accelerator the loop would fit
#: one exposure at a time.
LOOP_BACKENDS = ("cpu",)


@filter_jit
def _match_list_program(reference, exposures, hyper, bits_ref, bits_sci, config, dtype, loop):
    """Cast and match (``loop``: `match_sequence`, one exposure per step; else stacked
    and vectorised); the coefficients (``loop``: a tuple of N), the model images
    ``(N, H, W)``, the matched images (``loop``: a tuple of N; else ``(N, H, W)``), in
    the exposures' own dtype, and the diagnostics."""
    out_dtype = exposures[0].image.dtype
    reference = _cast_planes(reference, dtype)
    if loop:
        science = [_cast_planes(e, dtype) for e in exposures]
        fit = match_sequence(reference, science, hyper, bits_ref, bits_sci, config, config.binSize)
        scalars = Diagnostics.of(fit)
        matched = tuple(m.astype(out_dtype) for m in fit.matched)
        basis = plan_fit(config, reference.image.shape, config.binSize).basis
        coefficients = tuple(fit.coefficients[k] for k in range(len(exposures)))
        return coefficients, fit.model_images, matched, scalars, basis
    science = _cast_planes(stack_exposures(exposures), dtype)
    result = match_batch(
        reference, science, hyper, bits_ref, bits_sci, config, config.binSize, True
    )
    scalars = Diagnostics.of(result)
    matched = result.matched.astype(out_dtype)
    return result.model.coefficients, result.model_image, matched, scalars, result.model.basis


def batch_item(batch: Array, k: int) -> Array:
    """``batch[k]`` without copying where possible.

    On the CPU a JAX array's buffer is host memory: item ``k`` is then a view of it
    (NumPy, read-only) handed back to JAX, which keeps it without a copy when it is
    aligned as XLA needs (a copy otherwise). Elsewhere: ``batch[k]``.
    """
    if isinstance(batch, jax.core.Tracer) or _platform(batch) != "cpu":
        return batch[k]
    return jax.device_put(np.asarray(batch)[k])


def _item(arrays: Array | tuple[Array, ...], k: int) -> Array:
    """Item ``k`` of a batch ``(N, ...)`` (`batch_item`) or of a tuple of N arrays."""
    return arrays[k] if isinstance(arrays, tuple) else batch_item(arrays, k)


def _platform(array: Array) -> str:
    try:
        return next(iter(array.devices())).platform
    except (AttributeError, StopIteration):
        return ""


def _cast_planes(exposure: Exposure, dtype) -> Exposure:
    """``exposure`` with image and variance in ``dtype`` (inside the program: fused)."""
    if exposure.image.dtype == dtype and exposure.variance.dtype == dtype:
        return exposure
    return eqx.tree_at(
        lambda e: (e.image, e.variance),
        exposure,
        (exposure.image.astype(dtype), exposure.variance.astype(dtype)),
    )


#: Science exposures per compiled call of the task (`MatchBackgroundsTask.run`'s
#: ``chunkSize``) and of ``jaxmatch match`` (``--chunk-size``).
DEFAULT_CHUNK_SIZE = 16


def chunk_length(n: int, chunk_size: int | None) -> int:
    """Exposures per call when ``n`` are fitted in chunks of at most ``chunk_size``.

    The chunks are balanced: ``c = ceil(n / ceil(n / chunk_size))``, so the last
    chunk is padded by fewer than ``ceil(n / chunk_size)`` exposures (never by up to
    ``chunk_size - 1``), and every chunk has ``c`` exposures: one compiled program.
    ``chunk_size`` None: one call of ``n``.
    """
    if chunk_size is None or chunk_size >= n:
        return n
    calls = -(-n // chunk_size)
    return -(-n // calls)


@checks_own_arguments
def check_chunk_size(chunk_size: int | None, name: str = "chunk_size") -> None:
    """`ValueError` naming ``name`` unless ``chunk_size`` is None or an int ≥ 1."""
    if chunk_size is None:
        return
    integer = isinstance(chunk_size, (int, np.integer)) and not isinstance(chunk_size, bool)
    if not integer or chunk_size < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {chunk_size!r}")


@checks_own_arguments
def match_list(
    reference: Exposure,
    exposures: Sequence[Exposure],
    config,
    *,
    roughness: float | Float[Array, ""] | None = None,
    pad_to: int | None = None,
) -> ListFit:
    """Match each exposure of a list (one shape, dtype and plane set) to ``reference``.

    The same fit as ``match(reference, stack_exposures(exposures), config,
    roughness=roughness, raise_on_failure=False)``, without the stacked copy, and
    with each model's image returned with it (see the module docstring). Raises
    what `match` raises eagerly (shapes, config, mask planes).

    ``pad_to``: fit ``pad_to`` ≥ N exposures (the list followed by repeats of its
    first exposure, which are the same buffers: no copy) and return the N asked for.
    Chunks of one run padded to one length share one compiled program; each
    exposure's result does not depend on the others in its call.
    """
    exposures = list(exposures)
    check_stackable(exposures)
    _check_reference(reference, exposures[0])
    n = len(exposures)
    if pad_to is not None and pad_to > n:
        exposures = exposures + [exposures[0]] * (pad_to - n)
    if config.usePolynomial and config.undersampleStyle == "INCREASE_NXNYSAMPLE":
        # Re-binning is data-dependent (host round trips): the engine's own path.
        return _first(_via_match(reference, exposures, config, roughness), n)
    dtype = working_dtype(config, reference, exposures[0])
    reference, _, bits_ref, bits_sci = traced_mask_bits(
        reference, exposures[0], config.badMaskPlanes
    )
    exposures = [with_canonical_planes(e) for e in exposures]
    hyper = hyperparameters(config, dtype, roughness, None, None)
    plan_fit(config, reference.image.shape, config.binSize)  # eager shape checks
    loop = jax.default_backend() in LOOP_BACKENDS
    coefficients, images, matched, scalars, basis = _match_list_program(
        reference, tuple(exposures), hyper, bits_ref, bits_sci, config, dtype, loop
    )
    return _list_fit(coefficients, basis, images, matched, scalars, n)


def _list_fit(coefficients, basis, images, matched, scalars, n=None) -> ListFit:
    """Split batched results per exposure (views, not copies, on the CPU); the first
    ``n`` (default: all)."""
    host = jax.device_get(scalars)
    n = len(coefficients) if n is None else n
    models = [
        EvaluatedModel(_item(coefficients, k), basis, _item(images, k)) for k in range(n)
    ]
    matched = [_item(matched, k) for k in range(n)]
    return ListFit(models, matched, *(np.asarray(values)[:n] for values in host))


def _first(fit: ListFit, n: int) -> ListFit:
    """The first ``n`` exposures of a `ListFit`."""
    return ListFit(
        fit.models[:n], fit.matched[:n], *(getattr(fit, name)[:n] for name in Diagnostics._fields)
    )


def _check_reference(reference: Exposure, first: Exposure) -> None:
    """The reference is one exposure on the science exposures' pixel grid."""
    if reference.batch_shape or reference.image.shape != first.image.shape:
        raise ValueError(
            f"the exposures have shape {first.image.shape}, the reference "
            f"{reference.image.shape}: they must be on the same pixel grid"
        )


def _via_match(reference, exposures, config, roughness) -> ListFit:
    """`match` on the stacked batch, the images evaluated afterwards (one program)."""
    result = match(
        reference, stack_exposures(exposures), config, roughness=roughness, raise_on_failure=False
    )
    images = grid_image(result.model.coefficients, result.model.basis)
    matched = result.matched.astype(exposures[0].image.dtype)
    scalars = Diagnostics.of(result)
    return _list_fit(result.model.coefficients, result.model.basis, images, matched, scalars)
