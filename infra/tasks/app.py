"""app.deploy, app.stop: the team's applications, deployed into one environment."""

from invoke import task

from infra.tasks.common import HELP, locked, number, operator_errors, settings

DEPLOY_HELP = {
    "name": HELP["name"],
    "file": HELP["app_file"],
    "image": HELP["app_image"],
    "dry_run": HELP["dry_run"],
    "no_wait": HELP["no_wait"],
    "timeout": HELP["timeout"],
    "lock_wait": HELP["lock_wait"],
    "message": HELP["message"],
}


@task(help=DEPLOY_HELP, auto_shortflags=False)
@operator_errors
def deploy(
    c, name="", file="", image="", dry_run=False, no_wait=False, timeout="300", lock_wait="0",
    message="",
):  # fmt: skip
    """Deploy an application stack (the team's compose file) into one environment."""
    from infra import report
    from infra.apps import deploy as apps

    seconds = number(timeout, "timeout", "600")
    config = settings()
    plan = apps.prepare(config, name, file, image)  # bad input: one line, before the lock
    if dry_run:
        print(f"plan for app {plan.app.app} in {name} (dry run: nothing is changed)")
        print(report.format_app_plan(plan))
        return
    command = f"app.deploy --name={name} --file={file}" + (f" --image={image}" if image else "")
    with locked(config, "deploy", plan.stack, command, lock_wait, message):
        apps.apply(config, name, file, image, wait=not no_wait, timeout=seconds)


@task(
    help={
        "name": HELP["name"],
        "app": HELP["app"],
        "cleanup": HELP["cleanup"],
        "dry_run": HELP["dry_run"],
        "lock_wait": HELP["lock_wait"],
        "message": HELP["message"],
    },
    auto_shortflags=False,
)
@operator_errors
def stop(c, name="", app="", cleanup=False, dry_run=False, lock_wait="0", message=""):
    """Stop an application in one environment (its stack; `invoke status` lists them)."""
    from infra.apps import deploy as apps

    if dry_run:
        stack = apps.stack_to_stop(name, app)
        print(f"would run: docker stack rm {stack}, then wait until its containers are gone")
        if cleanup:
            print(f"would remove {stack}'s secrets and configs that no service uses")
        return
    stack = apps.stack_to_stop(name, app)  # a wrong name is one line, before the lock
    config = settings()
    with locked(config, "stop", stack, f"app.stop --name={name} --app={app}", lock_wait, message):
        apps.stop(config, name, app, cleanup=cleanup)
