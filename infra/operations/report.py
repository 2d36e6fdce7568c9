"""History records as lines for people (`invoke history`)."""

from __future__ import annotations

from collections.abc import Iterable

from infra.operations.history import Record
from infra.operations.lock import clock


def _short(name: str) -> str:
    return name.rsplit("-", 1)[-1] if "-" in name else name or "-"


def service_line(entry: dict) -> str:
    parts = [entry["change"]]
    old, new = entry.get("image") or ["", ""]
    if entry["change"] == "updated" and old != new:
        parts.append(f"image {old} -> {new}")
    elif entry["change"] == "added":
        parts.append(f"image {new}")
    for kind, word in (("configs", "config"), ("secrets", "secret")):
        for key, (was, now) in sorted((entry.get(kind) or {}).items()):
            parts.append(f"{word} {key} {_short(was)} -> {_short(now)}")
    return f"{entry['service']}: {'; '.join(parts)}"


def history_lines(records: Iterable[Record]) -> list[str]:
    lines = []
    for record in records:
        message = f"  {record.message!r}" if record.message else ""
        lines.append(
            f"#{record.seq:<4} {clock(record.time)}  {record.who}  {record.command}  "
            f"{record.result}{message}"
        )
        lines += [f"      {service_line(entry)}" for entry in record.services]
        if not record.services:
            lines.append("      no service changed")
    return lines
