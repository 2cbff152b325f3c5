"""A technology's data-quality suite, as the driver declares it.

The driver says what must hold of its records (plain data, no Great Expectations
import); tasks/quality.py turns the declaration into Great Expectations expectations
per chunk and into the on-disk whole-part checks. A driver without a suite declares
none, and its backups get the read-back alone; a plugin driver declares its own.
"""

from __future__ import annotations

from dataclasses import dataclass

UUID_SHAPE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


@dataclass(frozen=True)
class ColumnRule:
    """What every value of one column must be, checked chunk by chunk."""

    column: str
    not_null: bool = False
    regex: str | None = None  # every value matches
    min_value: int | None = None
    # The upper bound is per part and only known once the source is read: the key of
    # QualityPart.max_values holding it (e.g. Schemaless' watermark for added_id).
    max_value_of: str | None = None


@dataclass(frozen=True)
class QualitySuite:
    """Per-record rules plus the checks that span a whole part."""

    rules: tuple[ColumnRule, ...] = ()
    unique: tuple[tuple[str, ...], ...] = ()  # keys unique across the whole part
    increasing: str | None = None  # a column strictly increasing across the part
    parents: tuple[str, str] | None = None  # (path, parent): every parent present

    @property
    def ledger_names(self) -> list[str]:
        return ["+".join(key) for key in self.unique] + (["parents"] if self.parents else [])
