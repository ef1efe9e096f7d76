"""Fixtures shared by every test folder."""

import collections
import os
import shutil
import tempfile

import jax
import pytest

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch.BACKEND_COMPILE_EVENT


@pytest.fixture
def compilations():
    """A Counter of the XLA compilations during the test, by function name ("jit(step)"
    for ``jax.jit(step)``); a persistent-cache hit counts too."""
    counts = collections.Counter()

    def listener(event, duration, fun_name="", **_):
        if event == COMPILE_EVENT:
            counts[fun_name] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield counts
    jax.monitoring.unregister_event_duration_listener(listener)


_OWN_CACHE = pytest.StashKey[str]()  # the cache folder this run made, and deletes at its end


def pytest_configure(config):
    """One persistent compilation cache for the whole run, shared by both xdist workers and
    every subprocess a test starts (the loop's "auto" cache reads the same variable): a
    program that compiles for a second or more (JAX's threshold) compiles once per run,
    not once per test. A set ``JAX_COMPILATION_CACHE_DIR`` is used as it is; empty: off."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="zojax-tests-jax-cache-")
        config.stash[_OWN_CACHE] = os.environ["JAX_COMPILATION_CACHE_DIR"]
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


def pytest_unconfigure(config):
    if folder := config.stash.get(_OWN_CACHE, None):
        shutil.rmtree(folder, ignore_errors=True)
