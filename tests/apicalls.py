"""Counting the requests a docker SDK client sends to the engine: what the benchmark and the
acceptance suite measure a wait's cost by. Not part of the product: it wraps the client's
HTTP session, which only a measure has reason to do."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import docker


@dataclass
class ApiCalls:
    """The requests a client made to the engine while counted, by method and endpoint
    (`GET /services`, `GET /tasks`, `GET /events`, ...)."""

    by_endpoint: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total(self) -> int:
        return sum(self.by_endpoint.values())

    def add(self, method: str, url: str) -> None:
        path = urlsplit(url).path
        parts = [p for p in path.split("/") if p and not re.fullmatch(r"v\d+\.\d+", p)]
        endpoint = f"{method} /{parts[0] if parts else ''}"
        if len(parts) > 2:  # /services/<id>/update, /containers/<id>/json
            endpoint += f"/*/{parts[-1]}"
        elif len(parts) == 2:
            endpoint += "/*"
        with self._lock:
            self.by_endpoint[endpoint] += 1

    def summary(self) -> str:
        return ", ".join(f"{name} {n}" for name, n in self.by_endpoint.most_common())


@contextmanager
def count_api_calls(client: docker.DockerClient) -> Iterator[ApiCalls]:
    """Count every request `client` sends to the engine inside the block (from any thread:
    the event stream's too). Counters nest."""
    calls = ApiCalls()
    api = client.api
    original = api.send  # every request of the SDK goes through the session's send

    def send(request, **kwargs):
        calls.add(request.method, request.url)
        return original(request, **kwargs)

    api.send = send
    try:
        yield calls
    finally:
        api.send = original
