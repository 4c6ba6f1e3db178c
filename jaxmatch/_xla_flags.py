"""CPU settings jaxmatch needs, applied before JAX starts its backend.

Batched least squares (the QR of every fit, the solves of the global mode) run
as LAPACK calls inside XLA programs, and on the CPU two things have been seen to
deadlock them (every thread waiting, the call never returning; e.g. 16 exposures
of 512² or 64 of 256², a spline fit, on 2 cores):

- XLA's "concurrency-optimised scheduler" running two LAPACK calls side by side;
- jaxlib splitting one batched LAPACK call into chunks on XLA's thread pool while
  each chunk's OpenBLAS (SciPy's, which jaxlib calls) starts threads of its own.

So, unless the user has set them, jaxmatch sets
``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false`` and
``OPENBLAS_NUM_THREADS=1``. Both are read when the libraries start: XLA's at the
first computation, OpenBLAS's when it is loaded. They take effect when jaxmatch
is imported before anything has run on JAX (and before SciPy's linear algebra
is loaded); otherwise set them in the environment yourself. The XLA flag only
affects the CPU backend; one OpenBLAS thread also applies to NumPy's BLAS if
NumPy's OpenBLAS is not loaded yet.
"""

from __future__ import annotations

import os

_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def apply_xla_flags() -> None:
    """Set the two settings above where the environment does not already."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG not in flags:
        os.environ["XLA_FLAGS"] = (flags + f" {_FLAG}=false").strip()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


apply_xla_flags()
