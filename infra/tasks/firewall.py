"""firewall.plan, firewall.apply, firewall.remove: who may reach the published ports."""

from invoke import task

from infra.tasks.common import HELP, operator_errors, settings


@task(default=True)
@operator_errors
def plan(c):
    """Print the iptables rules that keep published ports to FIREWALL_ALLOW (no root needed)."""
    from infra import firewall

    print(firewall.format_plan(firewall.plan(settings(), firewall.current_rules_if_readable())))


@task(help={"dry_run": HELP["firewall_dry_run"]})
@operator_errors
def apply(c, dry_run=False):
    """Apply the rules of firewall.plan in DOCKER-USER (root, Linux), then read them back."""
    from infra import firewall

    config = settings()
    if dry_run:
        print(firewall.format_plan(firewall.plan(config, firewall.current_rules_if_readable())))
        return
    count = firewall.apply(config)
    if count:
        print(f"firewall: applied ({count} iptables commands)")


@task
@operator_errors
def remove(c):
    """Take the platform's chain and its jump out of DOCKER-USER; other rules stay."""
    from infra import firewall

    count = firewall.remove()
    print(f"firewall: removed ({count} iptables commands)" if count else "firewall: not applied")
