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
