"""Tests of `jaxmatch._maplimit`: a long-lived process stays under the kernel's map limit.

XLA's CPU compiler crashes a process that holds ``vm.max_map_count`` memory maps
(65530 by default), and every compiled program holds some. The checks use the
real ``/proc`` of this (Linux) process with a lowered limit: the premise (clearing
JAX's caches gives maps back), the trigger (only after `CHECK_EVERY`
compilations, only above the fraction, never under a trace), and a user's loop of
`match` calls at new image shapes staying under the limit.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmatch
from jaxmatch import _maplimit
from jaxmatch._compile import filter_jit

pytestmark = pytest.mark.skipif(_maplimit.map_count() is None, reason="needs Linux's /proc")


def _maps() -> int:
    count = _maplimit.map_count()
    assert count is not None
    return count


def _programs(jitted) -> int:
    """How many compiled programs a `jax.jit` function holds."""
    return jitted._cache_size()  # pyright: ignore[reportAttributeAccessIssue]


@filter_jit
def _double(x):
    return 2.0 * x


def _compile_new_programs(n: int) -> None:
    """Compile ``n`` programs JAX has not seen (each a new function; NumPy input, so
    that nothing else is compiled)."""
    for i in range(n):
        jax.jit(lambda x, i=i: x * i + 1.0)(np.ones(3)).block_until_ready()


def _match_at(side: int, rng) -> None:
    """One `match` call on 2 float64 ``side``² exposures (a new shape: ~40 programs)."""
    reference = jaxmatch.Exposure(100.0 + rng.normal(size=(side, side)))
    science = jaxmatch.Exposure(90.0 + rng.normal(size=(2, side, side)))
    result = jaxmatch.match(reference, science, jaxmatch.MatchBackgroundsConfig(binSize=8))
    assert np.all(np.asarray(result.status) == 0)


def test_clearing_the_caches_gives_maps_back(rng):
    """The premise: compiled programs hold maps (measured: ~500 for a new shape), and
    `jax.clear_caches` frees them."""
    before = _maps()
    _match_at(20, rng)
    grown = _maps()
    assert grown > before + 100
    jax.clear_caches()
    assert _maps() < grown - 100
    limit = _maplimit.map_limit()
    assert limit is not None and limit > 1000


def test_release_above_the_fraction_after_enough_compilations(monkeypatch, caplog):
    monkeypatch.setattr(_maplimit, "CHECK_EVERY", 5)
    monkeypatch.setattr(_maplimit, "map_limit", lambda: 100)  # far below this process's count
    kept = jax.jit(lambda x: x - 1.0)
    kept(np.ones(2))
    assert _programs(kept) == 1
    _maplimit._compiled_since_check[0] = 0
    _compile_new_programs(4)  # fewer than CHECK_EVERY: the count is not even read
    assert not _maplimit.release_programs_near_map_limit()
    assert _programs(kept) == 1
    _compile_new_programs(1)
    with caplog.at_level(logging.WARNING, logger="jaxmatch"):
        np.testing.assert_array_equal(_double(jnp.arange(3.0)), [0.0, 2.0, 4.0])
    assert _programs(kept) == 0  # released at the top-level call of an entry point
    assert _maplimit._compiled_since_check[0] <= 1  # the count restarts (+ `_double` itself)
    (record,) = [r for r in caplog.records if "vm.max_map_count" in r.getMessage()]
    assert "of the kernel's limit of 100" in record.getMessage()


def test_no_release_below_the_fraction_or_under_a_trace(monkeypatch):
    monkeypatch.setattr(_maplimit, "CHECK_EVERY", 1)
    kept = jax.jit(lambda x: x - 2.0)
    kept(np.ones(2))
    # Below the fraction: read, not released, and the count restarts.
    monkeypatch.setattr(_maplimit, "map_limit", lambda: 10**9)
    _compile_new_programs(1)
    assert not _maplimit.release_programs_near_map_limit()
    assert _maplimit._compiled_since_check[0] == 0
    # Above it, but the entry point is called inside a user's jit: nothing released.
    monkeypatch.setattr(_maplimit, "map_limit", lambda: 100)
    _compile_new_programs(1)
    np.testing.assert_array_equal(jax.jit(lambda x: _double(x) + 1.0)(jnp.ones(2)), [3.0, 3.0])
    assert _programs(kept) == 1


def test_without_proc_nothing_is_read_or_released(monkeypatch, tmp_path):
    monkeypatch.setattr(_maplimit, "_MAPS", tmp_path / "missing")
    monkeypatch.setattr(_maplimit, "_MAX_MAP_COUNT", tmp_path / "missing too")
    monkeypatch.setattr(_maplimit, "CHECK_EVERY", 1)
    assert _maplimit.map_count() is None and _maplimit.map_limit() is None
    _compile_new_programs(1)
    assert not _maplimit.release_programs_near_map_limit()


def test_matching_many_new_shapes_stays_under_the_limit(monkeypatch, rng):
    """A user's loop: `match` at five new image shapes, each adding ~500 maps, with
    the release threshold 300 maps above the process's present count. Without the
    release the count would end ~2500 above it; with it, the count never passes the
    threshold by more than what one shape's compilations add between two checks."""
    monkeypatch.setattr(_maplimit, "CHECK_EVERY", 10)
    jax.clear_caches()
    threshold = _maps() + 300
    monkeypatch.setattr(_maplimit, "map_limit", lambda: 2 * threshold)  # fraction 1/2
    counts = []
    for side in (24, 32, 40, 48, 56):
        _match_at(side, rng)
        counts.append(_maps())
    assert max(counts) < threshold + 700, counts
    assert counts[-1] < counts[0] + 1000, counts  # released, not grown by ~2000
