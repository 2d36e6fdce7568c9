"""Reading logs that are not followed ends even when the engine's log stream does not."""

from __future__ import annotations

import threading
import time

import pytest

from infra.engine import service_logs, until_idle


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


class _Service:
    """What engine.service_logs asks of the SDK's Service: logs(**options), a stream."""

    def __init__(self, stream):
        self.stream, self.options = stream, None

    def logs(self, **options):
        self.options = options
        return self.stream


def test_service_logs_of_a_stream_that_never_ends_are_what_came_before_the_silence():
    service = _Service(_stuck_after(b"created /data\n", b"done\n"))
    got = service_logs(service, idle=0.3, stdout=True, tail=5)
    assert got == b"created /data\ndone\n"
    assert service.options == {"stdout": True, "tail": 5}  # never follow


def test_service_logs_of_a_stream_that_ends_are_all_of_it():
    assert service_logs(_Service(iter([b"a\n", b"b\n"])), idle=5) == b"a\nb\n"
