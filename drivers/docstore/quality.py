"""Docstore's data-quality suite: what every collection must satisfy."""

from __future__ import annotations

from backstop.drivers.quality import ColumnRule, QualitySuite

# _id present and unique per collection; the count equal to the backup's.
SUITE = QualitySuite(rules=(ColumnRule("_id", not_null=True),), unique=(("_id",),))
