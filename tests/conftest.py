"""Fixtures shared by every test folder."""

import collections

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
