"""Keep freed memory for reuse: glibc's ``malloc`` settings for large XLA buffers.

On the CPU every buffer of an XLA program's outputs above glibc's mmap threshold
(32 MiB at most) is a fresh ``mmap`` of zeroed pages, returned with ``munmap``
when the array is freed. Each call therefore page-faults its whole output in
again on the first write, and so does every temporary buffer of that size: a
``(16, 1024, 1024)`` float32 array is 16 384 faults. On a 2-core virtual machine
a program writing one (``x + 1``) takes 36 ms, 19 ms with the memory reused; the
engine at 16 × 1024², LSST's defaults, spends 30 % of its time in the kernel, 3 %
with the settings below (180 → 133 ms).

`retain_freed_memory` makes glibc serve every allocation from one heap
(``M_ARENA_MAX = 1``: other arenas' heaps cannot grow past 64 MiB and fall back
to ``mmap``), never from ``mmap`` (``M_MMAP_MAX = 0``), and keep freed memory
instead of returning it to the system (``M_TRIM_THRESHOLD`` at its maximum, 2 GiB
at the top of the heap). The same buffers are then reused from call to call.

It is opt-in because it is process-wide: the resident memory stays at its peak
after the arrays are freed (a Dask worker's memory monitor counts it), and all of
the process's threads share one arena. It acts only on threads that have not
allocated yet, so it must run before JAX starts its CPU backend (the first
computation). Setting the environment variable ``JAXMATCH_RETAIN_FREED_MEMORY=1``
applies it when jaxmatch is imported; ``jaxmatch.retain_freed_memory()`` does the
same from code. Other allocators (macOS, musl, jemalloc preloaded) are left as
they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import warnings

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

#: The settings, in the order they are applied: one arena, no mmap, no trimming
#: (the largest value ``mallopt``'s int takes).
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))

#: The environment variable that applies the settings when jaxmatch is imported.
ENV_VAR = "JAXMATCH_RETAIN_FREED_MEMORY"


def is_glibc() -> bool:
    """Whether this process runs on Linux with glibc, whose ``mallopt`` this sets."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _backend_started() -> bool:
    """Whether JAX has started a backend (its thread pools then exist already)."""
    try:
        from jax._src import xla_bridge  # no public equivalent

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


def retain_freed_memory() -> bool:
    """Make glibc reuse freed memory for the large buffers of XLA programs.

    Process-wide and opt-in; see the module docstring for what it changes, what
    it costs and the measurements. Call it before the first JAX computation.

    Returns:
        True when all three ``mallopt`` settings were applied; False where the C
        library is not glibc or a setting was refused.

    Warns (`RuntimeWarning`) when JAX's backend has started already: the settings
    are then applied but do not reach the threads JAX has running.
    """
    if not is_glibc():
        return False
    path = ctypes.util.find_library("c") or "libc.so.6"
    try:
        mallopt = ctypes.CDLL(path).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if _backend_started():
        warnings.warn(
            "retain_freed_memory() after JAX's backend started: its threads keep the "
            f"allocator arenas they have; call it (or set {ENV_VAR}=1) before the first "
            "JAX computation",
            RuntimeWarning,
            stacklevel=2,
        )
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)


#: Whether `apply_from_environment` applied the settings (at jaxmatch's import).
applied_from_environment = False


def apply_from_environment() -> bool:
    """`retain_freed_memory` if `ENV_VAR` is ``1``; returns (and records in
    `applied_from_environment`) whether it was applied."""
    global applied_from_environment
    if os.environ.get(ENV_VAR, "").strip() == "1":
        applied_from_environment = retain_freed_memory()
    return applied_from_environment
