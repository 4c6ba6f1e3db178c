"""Keeping a long-lived process under the kernel's limit on memory maps.

XLA's CPU backend places the machine code of every program it compiles in
memory maps of its own, and JAX keeps every compiled program for the life of the
process. Linux refuses a process more than ``vm.max_map_count`` maps (65530 by
default), and past that limit XLA's compiler crashes the whole process with a
segmentation fault instead of raising an error. Measured with jaxlib 0.10: one
`match` call at an image shape not seen before compiles about 40 programs and
adds about 500 maps (~13 a program), so a notebook, a survey worker or a test run
that matches some 130 shapes or configurations in one process crashes.

jaxmatch therefore counts the programs JAX compiles (a `jax.monitoring`
listener, so the user's own programs count too) and, once `CHECK_EVERY` more
have been compiled, reads the process's map count from ``/proc/self/maps`` at the
next top-level call of one of its compiled entry points (`_compile.filter_jit`).
Above `RELEASE_FRACTION` of the limit it calls `jax.clear_caches()`, which frees
every compiled program (each is compiled again when it is next needed) and logs
a warning on the ``jaxmatch`` logger. Results do not change; only compile time
is spent again. Where ``/proc`` is missing (macOS, Windows) nothing is done.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax

#: Programs compiled between two reads of the map count (a read costs ~20 ms at
#: 40 000 maps; a compilation costs 10 ms or more).
CHECK_EVERY = 100
#: Release the compiled programs above this fraction of ``vm.max_map_count``:
#: half of it leaves room for several thousand more programs before the next check.
RELEASE_FRACTION = 0.5

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_MAPS = Path("/proc/self/maps")
_MAX_MAP_COUNT = Path("/proc/sys/vm/max_map_count")
_log = logging.getLogger("jaxmatch")

#: Programs compiled in this process since the map count was last read.
_compiled_since_check = [0]


def _count_compilation(event: str, duration_secs: float, **kwargs) -> None:
    if event == _COMPILE_EVENT:
        _compiled_since_check[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compilation)


def map_count() -> int | None:
    """The number of memory maps this process holds (None without ``/proc``)."""
    try:
        return _MAPS.read_bytes().count(b"\n")
    except OSError:
        return None


def map_limit() -> int | None:
    """The kernel's limit on a process's memory maps (None without ``/proc``)."""
    try:
        return int(_MAX_MAP_COUNT.read_text())
    except (OSError, ValueError):
        return None


def release_programs_near_map_limit(fraction: float | None = None) -> bool:
    """Free JAX's compiled programs if this process nears the memory-map limit.

    Reads the map count only after `CHECK_EVERY` compilations since the last
    read; releases (`jax.clear_caches`) above ``fraction`` (default
    `RELEASE_FRACTION`) of `map_limit`.
    Call only outside any trace (it empties the caches a trace may be using).

    Returns:
        whether the programs were released.
    """
    if _compiled_since_check[0] < CHECK_EVERY:
        return False
    _compiled_since_check[0] = 0
    count, limit = map_count(), map_limit()
    fraction = RELEASE_FRACTION if fraction is None else fraction
    if count is None or limit is None or count < fraction * limit:
        return False
    jax.clear_caches()
    _log.warning(
        "jaxmatch: this process held %d memory maps of the kernel's limit of %d "
        "(vm.max_map_count), most of them JAX's compiled programs; XLA's CPU compiler "
        "crashes the process past the limit, so JAX's caches were cleared (%s maps now). "
        "Programs are compiled again when next needed.",
        count,
        limit,
        map_count(),
    )
    return True
