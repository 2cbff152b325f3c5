"""Prefect artifacts summarising what a flow did (already redacted by the callers)."""

from __future__ import annotations

import re
from typing import Any

from prefect.artifacts import create_table_artifact

from backstop.drivers.redact import mask_secrets


def _key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def publish_table(kind: str, technology: str, rows: list[dict[str, Any]], description: str) -> None:
    safe_rows = [{k: mask_secrets(str(v)) for k, v in row.items()} for row in rows]
    create_table_artifact(
        key=_key("backstop", kind, technology),
        table=safe_rows,
        description=mask_secrets(description),
    )


def publish_quality(kind: str, label: str, quality: Any) -> None:
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
        key=_key("backstop", "quality", kind),
        table=[{k: mask_secrets(str(v)) for k, v in row.items()} for row in rows],
        description=mask_secrets(
            f"Data quality of {label}: {len(checks) - failed} checks passed, {failed} failed"
        ),
    )
