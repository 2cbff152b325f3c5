"""Schemaless' data-quality suite: what every cell table must satisfy."""

from __future__ import annotations

from backstop.drivers.quality import UUID_SHAPE, ColumnRule, QualitySuite

# row_key UUID-shaped and not null; column_name not null; ref_key >= 0; added_id within
# [1, the watermark] and strictly increasing (so unique); (row_key, column_name,
# ref_key) unique across the table; the count equal to the source's at the watermark.
SUITE = QualitySuite(
    rules=(
        ColumnRule("row_key", not_null=True, regex=UUID_SHAPE),
        ColumnRule("column_name", not_null=True),
        ColumnRule("ref_key", min_value=0),
        ColumnRule("added_id", min_value=1, max_value_of="added_id"),
    ),
    unique=(("row_key", "column_name", "ref_key"),),
    increasing="added_id",
)
