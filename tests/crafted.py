"""Crafting stored files as a hostile store writer would: new content, and a manifest
whose sizes and checksums are fixed up to match (what checksums cannot catch)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import zstandard


def store_folder(store_url: str) -> Path:
    return Path(store_url.removeprefix("file://"))


def backup_ids(store: Path, technology: str) -> list[str]:
    return sorted(p.parent.name for p in (store / technology).glob("*/manifest.json"))


def rewrite_stored_file(
    store: Path, technology: str, backup_id: str, chunks: Iterable[bytes], *, file_index: int = 0
) -> str:
    """Replace the content of the backup's `file_index`-th data file (over all units) by
    the concatenation of `chunks`, streamed (it may be far larger than memory would
    like), and fix up the manifest's sizes and checksums. Returns the file's name."""
    folder = store / technology / backup_id
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = [f for unit in manifest["units"] for f in unit["files"]][file_index]
    path = folder / entry["name"]
    raw_sha, raw_bytes = hashlib.sha256(), 0
    with path.open("wb") as out:
        writer = zstandard.ZstdCompressor(level=1, write_checksum=True).stream_writer(
            out, closefd=False
        )
        for chunk in chunks:
            raw_sha.update(chunk)
            raw_bytes += len(chunk)
            writer.write(chunk)
        writer.flush(zstandard.FLUSH_FRAME)
        writer.close()
    stored = path.read_bytes()
    entry.update(
        bytes=len(stored),
        sha256=hashlib.sha256(stored).hexdigest(),
        raw_bytes=raw_bytes,
        raw_sha256=raw_sha.hexdigest(),
    )
    files = [f for unit in manifest["units"] for f in unit["files"]]
    manifest["totals"]["bytes"] = sum(f["bytes"] for f in files)
    manifest["totals"]["raw_bytes"] = sum(f["raw_bytes"] for f in files)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return entry["name"]


def zeros(total: int, block: int = 8 << 20) -> Iterable[bytes]:
    """`total` zero bytes in blocks (they compress to almost nothing)."""
    chunk = bytes(block)
    while total > 0:
        yield chunk[: min(block, total)]
        total -= block
