"""Crafted stored records, every driver: a stored file rewritten by someone who can write
the store (checksums fixed up, so only the parsers stand in the way) fails the restore
as an integrity error naming the file, in bounded memory, whatever lengths it claims."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest
from crafted import backup_ids, rewrite_stored_file, store_folder, zeros

pytestmark = pytest.mark.integration

GROWTH_LIMIT = 256 << 20


@contextmanager
def peak_growth() -> Iterator[list[int]]:
    """Sample this process's RSS while the block runs; yields [growth over the start]."""
    process, result, done = psutil.Process(), [0], threading.Event()
    start = process.memory_info().rss

    def sample() -> None:
        while not done.wait(0.02):
            result[0] = max(result[0], process.memory_info().rss - start)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()


def crafted() -> Iterator[bytes]:
    """The largest lengths every format can claim (0xff bytes), then more bytes than a
    reader should ever hold: a reader that trusts a length runs out of memory or time."""
    yield b"\xff" * 64
    yield from zeros(384 << 20)


def test_a_record_claiming_huge_lengths_fails_the_restore_in_bounded_memory(
    harness, run, local_store
):
    assert run.backup(harness.make_source()).code == 0
    store = store_folder(local_store.url)
    [backup_id] = backup_ids(store, harness.technology)
    name = rewrite_stored_file(store, harness.technology, backup_id, crafted())

    target = harness.make_target()
    with peak_growth() as growth:
        restored = run.restore(target)
    assert growth[0] < GROWTH_LIMIT, f"the restore took {growth[0] >> 20} MiB more memory"
    assert restored.code == 1, restored.stdout + restored.stderr
    error = json.loads(restored.stdout.strip().splitlines()[-1])["error"]
    assert name in error, error
