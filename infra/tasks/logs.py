"""logs: a service's recent log lines, optionally followed."""

import queue
import sys
import threading
from collections.abc import Iterable, Iterator

from invoke import task

from infra.errors import SettingsError
from infra.tasks.common import HELP, operator_errors, settings, whole_number

# Without --follow the engine sends what it has at once, then ends the stream. Swarm's log
# broker sometimes never ends it (docker/cli#4678, moby#38640): a stream silent this long
# is taken as ended, and said so.
IDLE_SECONDS = 10.0
_END = object()


def until_idle(stream: Iterable[bytes], idle: float = IDLE_SECONDS) -> Iterator[bytes | None]:
    """The stream's chunks, then None if it went silent for `idle` seconds before its end
    (it is read by a daemon thread, left behind if the stream never ends)."""
    chunks: queue.Queue = queue.Queue()

    def pump() -> None:
        try:
            for chunk in stream:
                chunks.put(chunk)
        except Exception as exc:  # noqa: BLE001 - handed to the reader, raised there
            chunks.put(exc)
        chunks.put(_END)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            item = chunks.get(timeout=idle)
        except queue.Empty:
            yield None
            return
        if item is _END:
            return
        if isinstance(item, Exception):
            raise item
        yield item


@task(help={"service": HELP["service"], "follow": HELP["follow"], "tail": HELP["tail"]})
@operator_errors
def logs(c, service="", follow=False, tail="100"):
    """Print a service's logs (e.g. --service=dev_postgres)."""
    from infra import engine

    lines = whole_number(tail, "tail", "100")
    if not service:
        raise SettingsError(
            "no service given. Add --service=<stack>_<service>, e.g. --service=dev_postgres "
            "(invoke status lists them)."
        )
    client = engine.connect(settings().docker_host)
    engine.require_manager(client)
    names = sorted(s.name for s in client.services.list())
    if service not in names:
        raise SettingsError(
            f"no service named {service!r}. Valid: {', '.join(names) or 'none deployed'}."
        )
    stream = client.services.get(service).logs(
        stdout=True, stderr=True, follow=follow, tail=lines, timestamps=True
    )
    for chunk in stream if follow else until_idle(stream):
        if chunk is None:
            print(
                f"logs: the engine sent nothing more for {IDLE_SECONDS:.0f} s without ending "
                "the stream (a known Swarm defect); the lines above are what it sent. Run "
                "again, or add --follow.",
                file=sys.stderr,
            )
            return
        print(chunk.decode(errors="replace"), end="", flush=True)
