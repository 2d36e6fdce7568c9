"""`invoke logs` without --follow ends even when the engine's log stream does not."""

from __future__ import annotations

import threading
import time

import pytest

from infra.tasks.logs import until_idle


def _stuck_after(*chunks: bytes):
    """A stream that sends its chunks and then neither sends nor ends (Swarm's log broker
    at times: docker/cli#4678)."""
    yield from chunks
    threading.Event().wait()


def test_a_stream_that_goes_silent_ends_with_a_marker_after_the_idle_time():
    started = time.monotonic()
    got = list(until_idle(_stuck_after(b"one\n", b"two\n"), idle=0.3))
    assert got == [b"one\n", b"two\n", None]
    assert time.monotonic() - started < 5


def test_a_stream_that_ends_gives_every_chunk_and_no_marker():
    assert list(until_idle(iter([b"a", b"b", b"c"]), idle=5)) == [b"a", b"b", b"c"]


def test_an_error_of_the_stream_reaches_the_reader():
    def broken():
        yield b"a"
        raise ConnectionError("engine went away")

    reader = until_idle(broken(), idle=5)
    assert next(reader) == b"a"
    with pytest.raises(ConnectionError, match="engine went away"):
        next(reader)
