"""Prefect artifacts summarising what a flow did.

An artifact's key names what it is about, so the newest artifact under a key is the
newest news of one thing: `backstop-<kind>-<technology>[-<role>]-<hash>`, the hash
being of the redacted sources (or targets, or store) the artifact is about. A safety
backup (of a restore's targets) or a drill's backup never replaces the artifact of a
source's scheduled backups. The human-readable places are in the description.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from prefect.artifacts import create_table_artifact

from backstop.drivers.redact import mask_secrets, redact_url


def artifact_key(
    kind: str, technology: str, places: Sequence[str] = (), role: str | None = None
) -> str:
    """A valid Prefect artifact key (lowercase letters, digits, dashes), short and stable
    for the same places in the same order (a datastore's shards are ordered)."""
    parts = ["backstop", kind, technology] + ([str(role)] if role else [])
    if places:
        shown = "\n".join(redact_url(p) for p in places)
        parts.append(hashlib.sha256(shown.encode()).hexdigest()[:12])
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def _described(description: str, places: Sequence[str], what: str) -> str:
    shown = ", ".join(redact_url(p) for p in places)
    return mask_secrets(f"{description}\n\n{what}: {shown}" if places else description)


def publish_table(
    kind: str,
    technology: str,
    rows: list[dict[str, Any]],
    description: str,
    places: Sequence[str] = (),
    role: str | None = None,
    what: str = "Source",
) -> None:
    """One table artifact under the key of `places` (the sources, targets or store it is
    about) and `role`; `what` names the places in the description."""
    safe_rows = [{k: mask_secrets(str(v)) for k, v in row.items()} for row in rows]
    create_table_artifact(
        key=artifact_key(kind, technology, places, role),
        table=safe_rows,
        description=_described(description, places, what),
    )


def publish_quality(
    kind: str,
    technology: str,
    label: str,
    quality: Any,
    places: Sequence[str] = (),
    role: str | None = None,
    what: str = "Source",
) -> None:
    """The data-quality checks of a backup or a restored target, failures first."""
    checks = sorted(quality.checks, key=lambda c: c["passed"])
    rows = [
        {
            "check": c["check"],
            "part": c.get("part") or c.get("file", ""),
            "passed": "yes" if c["passed"] else "NO",
            "unexpected": c.get("unexpected", 0),
            "sample": ", ".join(c.get("sample", [])),
        }
        for c in checks
    ]
    failed = sum(not c["passed"] for c in checks)
    create_table_artifact(
        key=artifact_key(f"quality-{kind}", technology, places, role),
        table=[{k: mask_secrets(str(v)) for k, v in row.items()} for row in rows],
        description=_described(
            f"Data quality of {label}: {len(checks) - failed} checks passed, {failed} failed",
            places,
            what,
        ),
    )
