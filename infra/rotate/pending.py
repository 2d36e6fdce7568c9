"""The pending record of a rotation under way (step 1): the new values, kept 0600 in
`secrets.rotating.yml` next to secrets.yml before anything live changes, with the values they
replace, so an interrupted rotation is finished with the same new value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from infra import secrets
from infra.errors import SecretsError
from infra.rotate.keys import ROTATABLE, Report, Rotatable, check_key
from infra.settings import Settings


@dataclass(frozen=True)
class Pending:
    """A rotation under way: the new values (the key and what is derived from it) and the
    values they replace, kept 0600 until the rotation is done."""

    key: str
    new: Mapping[str, str] = field(repr=False)
    old: Mapping[str, str] = field(repr=False)


def pending_path(settings: Settings) -> Path:
    path = settings.secrets_file
    return path.with_name(f"{path.stem}.rotating{path.suffix or '.yml'}")


def read_pending(settings: Settings) -> Pending | None:
    path = pending_path(settings)
    if not path.exists():
        return None
    fix = f"Finish the rotation it records by hand, then remove {path}"
    if path.stat().st_mode & 0o077:
        raise SecretsError(f"{path} is readable by other users. Run: chmod 600 {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        raise SecretsError(f"{path} cannot be read as a rotation record. {fix}.") from None
    if (
        not isinstance(data, dict)
        or data.get("key") not in ROTATABLE
        or not isinstance(data.get("new"), dict)
        or not isinstance(data.get("old"), dict)
        or data["key"] not in data["new"]
    ):
        raise SecretsError(f"{path} is not a rotation record. {fix}.")
    return Pending(data["key"], dict(data["new"]), dict(data["old"]))


def write_pending(settings: Settings, pending: Pending) -> None:
    text = (
        "# A secret rotation under way (invoke secrets.rotate). Removed when it is done;\n"
        f"# if it is still here, finish it: invoke secrets.rotate --key={pending.key}\n"
        + yaml.safe_dump(
            {"key": pending.key, "new": dict(pending.new), "old": dict(pending.old)},
            sort_keys=False,
            default_flow_style=False,
            width=1000,
        )
    )
    secrets.write_private(pending_path(settings), text)


def clear_pending(settings: Settings) -> bool:
    path = pending_path(settings)
    if not path.exists():
        return False
    path.unlink()
    return True


def make_new_values(settings: Settings, rotatable: Rotatable, current: Mapping[str, str]) -> dict:
    """A fresh value for the key, and the keys derived from it made again from that value."""
    by_name = {key.name: key for key in secrets.SCHEMA}
    values = dict(current)
    new: dict[str, str] = {}
    for name in (rotatable.key, *rotatable.derived):
        value = by_name[name].make(settings, values)
        while name == rotatable.key and value == current[name]:  # never "rotate" to the same
            value = by_name[name].make(settings, values)
        values[name] = new[name] = value
    return new


def pending_for(settings: Settings, key: str) -> Pending | None:
    """The pending record of an interrupted rotation of `key`, if any; an interrupted
    rotation of another key must be finished first."""
    found = read_pending(settings)
    if found is not None and found.key != key:
        raise SecretsError(
            f"a rotation of {found.key} was interrupted ({pending_path(settings)}). Finish it "
            f"first: invoke secrets.rotate --key={found.key}"
        )
    return found


def begin(settings: Settings, key: str, report: Report = print) -> Pending:
    """Step 1: the pending record, made now or found from an interrupted run of this key."""
    rotatable = check_key(key)
    current = secrets.load(settings)
    found = pending_for(settings, key)
    path = pending_path(settings)
    if found is not None:
        report(f"1/6 pending: resuming the interrupted rotation of {key} with its new value")
        return found
    new = make_new_values(settings, rotatable, current)
    pending = Pending(key, new, {name: current[name] for name in new})
    write_pending(settings, pending)
    report(f"1/6 pending: new value made, kept in {path} (0600) until the rotation is done")
    return pending
