"""`--until` for Schemaless: where a point-in-time restore stops.

--until 5000                         every table of every shard: added_id <= 5000
--until shard-000=5000,shard-001=7000  per shard (shards not named: no limit)
--until 2026-11-26T12:00:00Z         every cell with created_at <= that UTC time
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from backstop.drivers.errors import BadInputError
from backstop.drivers.schemaless.cells import Cell, to_micros

_SHARD_LIMIT = re.compile(r"^(shard-\d{3})=(\d+)$")


@dataclass(frozen=True)
class Limit:
    """The last cell a restore keeps: by added_id, by created_at, or neither."""

    watermark: int | None = None
    created_micros: int | None = None

    def keeps(self, cell: Cell) -> bool:
        if self.watermark is not None and cell[0] > self.watermark:
            return False
        return self.created_micros is None or cell[5] <= self.created_micros

    @property
    def unlimited(self) -> bool:
        return self.watermark is None and self.created_micros is None


def parse_until(value: str | None, shard: str) -> Limit:
    if not value:
        return Limit()
    text = value.strip()
    if text.isdigit():
        return Limit(watermark=int(text))
    if "=" in text:
        limits = {}
        for part in text.split(","):
            match = _SHARD_LIMIT.match(part.strip())
            if not match:
                raise BadInputError(_usage(value))
            limits[match.group(1)] = int(match.group(2))
        return Limit(watermark=limits.get(shard))
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadInputError(_usage(value)) from None
    if moment.tzinfo is None:
        raise BadInputError(f"--until {value!r}: give the time zone (e.g. 2026-11-26T12:00:00Z)")
    return Limit(created_micros=to_micros(moment.astimezone(UTC)))


def _usage(value: str) -> str:
    return (
        f"--until {value!r}: expected a watermark (5000), per-shard watermarks "
        "(shard-000=5000,shard-001=7000) or a UTC time (2026-11-26T12:00:00Z)"
    )
