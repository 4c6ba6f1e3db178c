"""XLA settings jaxmatch needs on the CPU, applied before JAX starts its backend.

XLA's CPU "concurrency-optimised scheduler" runs independent operations of one
program side by side. With LAPACK calls (the QR of the fit, the solves of the
global mode) in a batched program, that has been seen to deadlock: every thread
waits and the call never returns (e.g. 16 exposures of 512², a spline fit, on
2 cores). jaxmatch therefore switches that scheduler off through ``XLA_FLAGS``
unless the user has set the flag. XLA reads ``XLA_FLAGS`` when the backend
starts (the first computation), so this works when jaxmatch is imported before
anything has run on JAX; set the flag yourself otherwise. It affects only the
CPU backend.
"""

from __future__ import annotations

import os

_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def apply_xla_flags() -> None:
    """Add ``--xla_cpu_enable_concurrency_optimized_scheduler=false`` to XLA_FLAGS."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG not in flags:
        os.environ["XLA_FLAGS"] = (flags + f" {_FLAG}=false").strip()


apply_xla_flags()
