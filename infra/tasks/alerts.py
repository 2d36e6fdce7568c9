"""alerts: what fires now, and a test alert through every configured receiver."""

from invoke import task

from infra.errors import AlertsError
from infra.tasks.common import number, operator_errors, settings


@task(name="list", default=True, help={"json": "print the alerts as JSON, for scripts"})
@operator_errors
def list_(c, json_=False):
    """List the alerts that fire now (from Alertmanager), most severe first."""
    import json

    from infra import engine
    from infra.alerts import api

    client = engine.connect(settings().docker_host)
    engine.require_manager(client)
    if not api.deployed(client):
        raise api.not_deployed()
    alerts = api.firing(client)
    if json_:
        print(json.dumps([api.as_json(a) for a in alerts], indent=2))
        return
    print("\n".join(api.describe(alerts)))


@task(help={"timeout": "seconds to wait for every receiver's delivery (default: group wait + 60)"})
@operator_errors
def test(c, timeout="0"):
    """Send a test alert through Alertmanager to every configured receiver; report each."""
    from infra import engine
    from infra.alerts import api, receivers

    seconds = number(timeout, "timeout", "120", zero=True)
    config = settings()
    configured = receivers.configured(config.values)
    if not configured:
        raise AlertsError(
            "no alert receiver is configured, so there is nothing to test. Set "
            "ALERT_WEBHOOK_URL, ALERT_SLACK_WEBHOOK_URL, ALERT_TELEGRAM_BOT_TOKEN or "
            "ALERT_EMAIL_TO in .env, run `invoke deploy.shared`, then retry."
        )
    client = engine.connect(config.docker_host)
    engine.require_manager(client)
    if not api.deployed(client):
        raise api.not_deployed()
    with api.reached(client) as alertmanager:  # one companion for the whole test
        before = api.notification_counts(alertmanager)
        marker = api.send_test_alert(alertmanager)
        wait = seconds or receivers.seconds(config.get("ALERT_GROUP_WAIT") or "30s") + 60
        print(f"test alert sent (instance=invoke-alerts-test-{marker}); waiting for the receivers")
        results = api.deliveries(alertmanager, configured, before, timeout=wait)
    for delivery in results:
        print(f"  {delivery.receiver.label:<10} {delivery.outcome}")
    failed = [d for d in results if d.outcome != "delivered"]
    if failed:
        names = ", ".join(d.receiver.label for d in failed)
        raise AlertsError(
            f"not delivered to {names}. "
            "See `invoke logs --service=shared_alertmanager` for the receiver's answer."
        )
