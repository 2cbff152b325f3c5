"""ZooKeeper's data-quality suite (logical backups): what every tree must satisfy."""

from __future__ import annotations

from backstop.drivers.quality import ColumnRule, QualitySuite

# Paths absolute and unique; every parent present; the count equal to the walk's.
SUITE = QualitySuite(
    rules=(ColumnRule("path", not_null=True, regex=r"^/"),),
    unique=(("path",),),
    parents=("path", "parent"),
)
