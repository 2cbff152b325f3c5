"""Prefect events for monitoring: one per outcome, about the backed-up source.

    backstop.backup.completed | backstop.backup.failed
    backstop.restore.completed | backstop.restore.failed
    backstop.verify.failed
    backstop.drill.passed | backstop.drill.failed

The resource is the source (technology + redacted URLs), so an automation can alert
on a failure, or on a source with no `backstop.backup.completed` within N hours
(docs/operations.md has both). The resource label `backstop.role` (and the payload's
`role`) is the role of the backup the event is about (tasks/manifest.py Role): a safety
backup's source is a restore's target, a drill's backup is the drill's own, and a
staleness automation matches `scheduled` and `adhoc` only. Payloads carry figures,
never credentials.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prefect.events import emit_event

from backstop.drivers.redact import mask_secrets, redact_url

# A resource id is indexed by Prefect's event store: PostgreSQL refuses an index entry
# past 2,704 bytes, and 4,096 shards' URLs joined are ~224 KB. Longer lists are shown
# by their first URLs and named by a digest of them all: stable for the same sources,
# so an automation grouping by resource still sees one source per fleet.
MAX_RESOURCE_ID = 600  # characters: at most 2,400 bytes in UTF-8


def source_resource(
    technology: str, sources: Sequence[str], role: str | None = None
) -> dict[str, str]:
    shown = ",".join(redact_url(s) for s in sources)
    prefix = f"backstop.source.{technology}."
    if len(prefix) + len(shown) > MAX_RESOURCE_ID:
        digest = hashlib.sha256(shown.encode()).hexdigest()[:32]
        tail = f",...({len(sources)} sources, sha256 {digest})"
        shown = shown[: MAX_RESOURCE_ID - len(prefix) - len(tail)] + tail
    resource = {
        "prefect.resource.id": prefix + shown,
        "prefect.resource.name": f"{technology} {shown}",
        "backstop.technology": technology,
        "backstop.sources": str(len(sources)),
    }
    if role:
        resource["backstop.role"] = str(role)
    return resource


def emit(
    name: str,
    technology: str,
    sources: Sequence[str],
    payload: dict[str, Any] | None = None,
    role: str | None = None,
) -> None:
    """Emit `backstop.<name>`; monitoring must never be why a backup fails."""
    payload = dict(payload or {}) | ({"role": str(role)} if role else {})
    safe = json.loads(mask_secrets(json.dumps(payload, default=str)))
    try:
        emit_event(
            event=f"backstop.{name}",
            resource=source_resource(technology, sources, role),
            payload=safe,
        )
    except Exception as exc:  # an events outage is not a backup failure
        logging.getLogger(__name__).warning("could not emit backstop.%s: %s", name, exc)


@dataclass
class Report:
    """What a flow tells its outcome event: the source it is about, and figures."""

    technology: str
    sources: list[str]
    payload: dict[str, Any] = field(default_factory=dict)
    role: str | None = None  # of the backup the event is about, once known


@contextmanager
def reported(
    kind: str,
    technology: str,
    sources: Sequence[str],
    *,
    ok: str = "completed",
    bad: str = "failed",
    role: str | None = None,
) -> Iterator[Report]:
    """Emit `backstop.<kind>.<ok>` when the block ends well, `<kind>.<bad>` (with the
    error) when it raises; the block may name the source, its role and add figures on
    the way."""
    report = Report(technology, list(sources), role=role)
    try:
        yield report
    except BaseException as exc:
        error = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        emit(
            f"{kind}.{bad}", report.technology, report.sources, report.payload | error,
            report.role,
        )  # fmt: skip
        raise
    emit(f"{kind}.{ok}", report.technology, report.sources, report.payload, report.role)
