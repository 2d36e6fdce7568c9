"""The runner stack's settings: where runners register (GITHUB_OWNER) and how.

The runner image (myoung34/github-runner) registers at every container start. A
registration token (RUNNER_TOKEN) lives one hour at GitHub, so only a credential that can
mint new ones keeps restarts, reboots, updates and scale-ups working: a personal access
token (RUNNER_ACCESS_TOKEN) or a GitHub App (RUNNER_APP_ID and its private key file). The
credential reaches the container as a Docker secret; configs/runner/entrypoint.sh reads it
into the image's variable just before exec'ing the image's entrypoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from infra.errors import SecretsError, SettingsError

BY_ACCESS_TOKEN = "access-token"  # noqa: S105 (the name of a way, not a token)
BY_APP = "app"
BY_REGISTRATION_TOKEN = "registration-token"  # noqa: S105 (a name)


@dataclass(frozen=True)
class Registration:
    """One way of registering: the .env setting that chooses it and its Docker secret."""

    name: str
    variable: str  # the .env setting whose presence chooses this way
    secret: str  # the Docker secret (stacks/runner.<name>.yml) carrying the credential

    @property
    def overlay(self) -> str:
        return f"runner.{self.name}.yml"


REGISTRATIONS: dict[str, Registration] = {
    BY_ACCESS_TOKEN: Registration(BY_ACCESS_TOKEN, "RUNNER_ACCESS_TOKEN", "runner_access_token"),
    BY_APP: Registration(BY_APP, "RUNNER_APP_ID", "runner_app_private_key"),
    BY_REGISTRATION_TOKEN: Registration(BY_REGISTRATION_TOKEN, "RUNNER_TOKEN", "runner_token"),
}

EXPIRY_WARNING = (
    "RUNNER_TOKEN is a registration token, which GitHub lets live one hour: after that every "
    "runner restart, node reboot, update or scale-up fails to register. Set "
    "RUNNER_ACCESS_TOKEN or a GitHub App (RUNNER_APP_ID, RUNNER_APP_PRIVATE_KEY_FILE) instead "
    "(README: Runners)."
)

# GitHub's own rules: an account name is 1-39 letters, digits and single inner dashes; a
# repository name is letters, digits, '.', '-' and '_'.
_ACCOUNT = r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}"
_OWNER = re.compile(rf"(?P<account>{_ACCOUNT})(?:/(?P<repo>[A-Za-z0-9._-]{{1,100}}))?")
_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")
_GROUP = re.compile(r"[^,\n]{1,64}")
_ON_OFF = ("on", "off")


def owner(values: Mapping[str, str]) -> tuple[str, str | None]:
    """GITHUB_OWNER as (account, repository or None); validated by `validate`."""
    match = _OWNER.fullmatch(values.get("GITHUB_OWNER", ""))
    if match is None:
        raise SettingsError("GITHUB_OWNER is not set. Put it in .env for the runner.")
    return match["account"], match["repo"]


def registration(values: Mapping[str, str]) -> Registration | None:
    """The way of registering .env chooses (validated: at most one), or None."""
    chosen = [r for r in REGISTRATIONS.values() if values.get(r.variable)]
    return chosen[0] if chosen else None


def validate(values: Mapping[str, str], where: str = "") -> None:
    """The runner settings' form, whether or not the runner is deployed (an empty value is
    fine here; `check_deployable` asks for what a deploy needs)."""
    github_owner = values.get("GITHUB_OWNER", "")
    if github_owner and not _OWNER.fullmatch(github_owner):
        if "://" in github_owner or github_owner.lower().startswith(("github.com", "www.")):
            problem = "is a URL"
        else:
            problem = "is not an organisation or owner/repository name"
        raise SettingsError(
            f"GITHUB_OWNER={github_owner!r}{where} {problem}. Write the organisation (acme) "
            "or one repository (acme/app), without https://github.com/."
        )
    chosen = [r.variable for r in REGISTRATIONS.values() if values.get(r.variable)]
    if len(chosen) > 1:
        raise SettingsError(
            f"{' and '.join(chosen)} are {'both' if len(chosen) == 2 else 'all'} set{where}: "
            "the runners register one way. "
            "Keep one (RUNNER_ACCESS_TOKEN or the GitHub App: they last) and empty the others."
        )
    app_id, key_file = (
        values.get("RUNNER_APP_ID", ""),
        values.get("RUNNER_APP_PRIVATE_KEY_FILE", ""),
    )
    if app_id and not app_id.isdigit():
        raise SettingsError(
            f"RUNNER_APP_ID={app_id!r}{where} is not a number. Copy the App ID from the "
            "GitHub App's settings page."
        )
    if bool(app_id) != bool(key_file) or (values.get("RUNNER_APP_LOGIN") and not app_id):
        raise SettingsError(
            f"a GitHub App needs both RUNNER_APP_ID and RUNNER_APP_PRIVATE_KEY_FILE{where} "
            "(RUNNER_APP_LOGIN is optional). Set the missing one, or empty all of them."
        )
    login = values.get("RUNNER_APP_LOGIN", "")
    if login and not re.fullmatch(_ACCOUNT, login):
        raise SettingsError(
            f"RUNNER_APP_LOGIN={login!r}{where} is not a GitHub account name. Give the "
            "organisation or user the App is installed on, or leave it empty."
        )
    ephemeral = values.get("RUNNER_EPHEMERAL", "off")
    if ephemeral.lower() not in _ON_OFF:
        raise SettingsError(
            f"RUNNER_EPHEMERAL={ephemeral!r}{where} is not valid. Valid: on, off (default off)."
        )
    for label in (part.strip() for part in values.get("RUNNER_LABELS", "").split(",")):
        if label and not _LABEL.fullmatch(label):
            raise SettingsError(
                f"RUNNER_LABELS{where} has {label!r}, which is not a label. Write labels of "
                "letters, digits, '.', '-' and '_', separated by commas (e.g. docker,build)."
            )
    group = values.get("RUNNER_GROUP", "")
    if group and not _GROUP.fullmatch(group):
        raise SettingsError(
            f"RUNNER_GROUP={group!r}{where} is not a runner group name (at most 64 "
            "characters, no commas). Copy it from the organisation's Actions settings."
        )


def check_deployable(values: Mapping[str, str]) -> list[str]:
    """What deploying the runner stack needs; returns the warnings to show (one line each)."""
    missing = [name for name in ("GITHUB_OWNER",) if not values.get(name)]
    way = registration(values)
    if way is None:
        missing.append("RUNNER_ACCESS_TOKEN (or a GitHub App)")
    if missing:
        raise SettingsError(
            f"{' and '.join(missing)} not set. Put them in .env for the runner (README: Runners)."
        )
    _, repo = owner(values)
    if repo is not None and values.get("RUNNER_GROUP"):
        raise SettingsError(
            f"RUNNER_GROUP is set, but GITHUB_OWNER={values['GITHUB_OWNER']!r} is one "
            "repository: runner groups belong to organisations. Empty RUNNER_GROUP, or set "
            "GITHUB_OWNER to the organisation."
        )
    if way.name == BY_REGISTRATION_TOKEN:
        if ephemeral(values):
            raise SettingsError(
                "RUNNER_EPHEMERAL=on registers a new runner after every job, which a "
                "registration token (RUNNER_TOKEN) cannot do after its first hour. Set "
                "RUNNER_ACCESS_TOKEN or a GitHub App instead, or RUNNER_EPHEMERAL=off."
            )
        return [EXPIRY_WARNING]
    return []


def ephemeral(values: Mapping[str, str]) -> bool:
    return values.get("RUNNER_EPHEMERAL", "off").lower() == "on"


def stack_variables(values: Mapping[str, str]) -> dict[str, str]:
    """What stacks/runner*.yml interpolate: the image's scope variables and options."""
    github_owner = values.get("GITHUB_OWNER", "")
    account, repo = owner(values) if github_owner else ("", None)
    labels = ",".join(p.strip() for p in values.get("RUNNER_LABELS", "").split(",") if p.strip())
    return {
        # The image registers at https://github.com/<ORG_NAME> with RUNNER_SCOPE=org, at
        # REPO_URL with RUNNER_SCOPE=repo; its token.sh asks the matching API for tokens.
        "RUNNER_SCOPE": "repo" if repo else "org",
        "RUNNER_ORG_NAME": "" if repo else account,
        "RUNNER_REPO_URL": f"https://github.com/{account}/{repo}" if repo else "",
        # The image tests EPHEMERAL for being non-empty: "false" would turn it on.
        "RUNNER_EPHEMERAL_FLAG": "true" if ephemeral(values) else "",
        "RUNNER_LABELS": labels,  # empty: the image's default labels
        "RUNNER_GROUP": values.get("RUNNER_GROUP", ""),  # empty: the image's Default group
        "RUNNER_APP_ID": values.get("RUNNER_APP_ID", ""),
        "RUNNER_APP_LOGIN": values.get("RUNNER_APP_LOGIN", ""),  # empty: the owner's account
    }


def read_private_key(path_value: str) -> str:
    """The GitHub App's private key, from RUNNER_APP_PRIVATE_KEY_FILE (a .pem file)."""
    path = Path(path_value)
    fix = "Download the App's private key (.pem) and set RUNNER_APP_PRIVATE_KEY_FILE to it."
    if not path.exists():
        raise SecretsError(f"RUNNER_APP_PRIVATE_KEY_FILE {path} does not exist. {fix}")
    if not path.is_file():
        raise SecretsError(f"RUNNER_APP_PRIVATE_KEY_FILE {path} is not a file. {fix}")
    try:
        text = path.read_text(encoding="ascii")
    except OSError as exc:
        raise SecretsError(
            f"RUNNER_APP_PRIVATE_KEY_FILE {path} cannot be read ({exc.strerror}). "
            "Fix its permissions."
        ) from None
    except UnicodeDecodeError:
        text = ""
    if not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text):
        raise SecretsError(f"RUNNER_APP_PRIVATE_KEY_FILE {path} is not a PEM private key. {fix}")
    return text
