"""What deploying an app needs: its stack's name, the filled-in stack, the connection secrets
with content-hashed names, the file's own configs and secrets. Pure: reads files, never
talks to Docker."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from infra.apps.compose import AppFile
from infra.apps.fill import fill
from infra.errors import SettingsError
from infra.plan import DockerObject, StackPlan, versioned_name
from infra.secrets import APP_SECRETS, render_app_secret
from infra.settings import Settings


def stack_name(env: str, app: str) -> str:
    return f"{env}-app-{app}"


@dataclass(frozen=True)
class AppPlan:
    app: AppFile
    stack: str
    document: dict = field(repr=False)  # the stack to deploy, filled in
    secrets: tuple[DockerObject, ...]  # the connection secrets, made by infra
    objects: tuple[DockerObject, ...]  # the file's own configs and secrets
    variables: Mapping[str, str] = field(repr=False)
    resolve_image: str = "changed"
    reservations_scale: Decimal = Decimal(1)
    update_monitor: str = ""

    @property
    def networks(self) -> tuple[str, ...]:
        return tuple(spec["name"] for spec in self.document["networks"].values())

    def stack_plan(self, path: Path) -> StackPlan:
        """The platform's plan of one stack, for the filled-in stack written at `path`: what
        deploy.deploy_stack renders, hashes and deploys."""
        return StackPlan(
            name=self.stack,
            files=(path,),
            variables=self.variables,
            secrets=self.secrets + tuple(o for o in self.objects if o.kind == "secret"),
            configs=tuple(obj for obj in self.objects if obj.kind == "config"),
            data_dirs=(),
            ports={},
            resolve_image=self.resolve_image,
            reservations_scale=self.reservations_scale,
            update_monitor=self.update_monitor,
        )


def plan_app(app: AppFile, settings: Settings, secret_values: Mapping[str, str] | None) -> AppPlan:
    """The plan of a checked app file. Without secret values (secrets.yml not generated yet:
    a dry run), the connection secrets' names carry a placeholder hash."""
    stack = stack_name(app.env, app.app)
    secrets = []
    for key in APP_SECRETS:
        if secret_values is None:
            data, name = b"", f"{stack}_{key}-<from secrets.yml>"
        else:
            data = render_app_secret(app.env, key, secret_values)
            name = versioned_name(stack, key, data)
        secrets.append(DockerObject("secret", stack, key, name, "secrets.yml", data, True))
    objects = []
    for kind in ("configs", "secrets"):
        for key, spec in (app.rendered.get(kind) or {}).items():
            if "file" not in spec:
                continue
            source = Path(spec["file"])
            try:
                data = source.read_bytes()
            except OSError:
                raise SettingsError(
                    f"{app.path}: {kind[:-1]} {key} reads {source}, which does not exist."
                ) from None
            name = versioned_name(stack, key, data)
            # Secrets are created by infra (labelled, so pruned like the platform's); configs
            # by `docker stack deploy`, under the hashed name.
            generated = kind == "secrets"
            objects.append(DockerObject(kind[:-1], stack, key, name, str(source), data, generated))
    document = fill(
        app,
        stack,
        {obj.key: obj.name for obj in secrets},
        {(obj.kind, obj.key): obj.name for obj in objects},
    )
    return AppPlan(
        app=app,
        stack=stack,
        document=document,
        secrets=tuple(secrets),
        objects=tuple(objects),
        variables=settings.engine_variables(),
        resolve_image=settings.get("RESOLVE_IMAGE") or "changed",
        reservations_scale=settings.reservations_scale,
        update_monitor=settings.update_monitor,
    )
