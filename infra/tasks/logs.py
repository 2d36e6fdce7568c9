"""logs: a service's recent log lines, optionally followed."""

import sys

from invoke import task

from infra.errors import SettingsError
from infra.tasks.common import HELP, operator_errors, settings, whole_number


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
    # Without --follow the engine sends what it has at once, then ends the stream; Swarm's
    # log broker sometimes never ends it (engine.until_idle), which is said.
    for chunk in stream if follow else engine.until_idle(stream):
        if chunk is None:
            print(
                f"logs: the engine sent nothing more for {engine.LOG_IDLE_SECONDS:.0f} s "
                "without ending the stream (a known Swarm defect); the lines above are what it "
                "sent. Run again, or add --follow.",
                file=sys.stderr,
            )
            return
        print(chunk.decode(errors="replace"), end="", flush=True)
