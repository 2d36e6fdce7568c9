"""The labels infra puts on (and reads from) Docker objects, in a module of their own so that
what only reads the swarm (`invoke status`) needs neither the planner nor the secrets."""

STACK_NAMESPACE = "com.docker.stack.namespace"  # docker stack deploy's own
LABEL_STACK = "org.nextcandle.stack"
LABEL_KEY = "org.nextcandle.key"
LABEL_HASH = "org.nextcandle.content-hash"
LABEL_SPEC_HASH = "org.nextcandle.spec-hash"  # on services: hash of the rendered definition
APP_LABEL = "org.nextcandle.app"
ENV_LABEL = "org.nextcandle.environment"


def apps_of(services: list) -> dict[str, tuple[str, str]]:
    """The app stacks among `services` (SDK services, already read): stack name ->
    (environment, app), from their labels."""
    found = {}
    for service in services:
        labels = service.attrs["Spec"].get("Labels") or {}
        stack = labels.get(STACK_NAMESPACE)
        if stack and labels.get(APP_LABEL) and labels.get(ENV_LABEL):
            found[stack] = (labels[ENV_LABEL], labels[APP_LABEL])
    return found
