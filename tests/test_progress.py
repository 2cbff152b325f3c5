"""The CLI's live progress display stays as many lines as units run at once, however many
units a backup has (1,024 shards drew 1,024 lines ten times a second, holding the GIL)."""

from __future__ import annotations

from backstop.tasks.progress import RichProgress


def test_finished_units_fold_into_one_line():
    with RichProgress() as progress:
        running = [progress.start(f"backup shard-{i:04d}") for i in range(4)]
        for advance in running:
            advance(5, 500)
        for i in range(1_000):
            label = f"backup shard-{i + 4:04d}"
            progress.start(label)(10, 1_000)
            progress.finish(label)
        shown = progress._progress.tasks
    assert len(shown) == 5  # the 4 running units and the line of those done
    [done] = [t for t in shown if t.description == "1,000 done"]
    assert done.completed == 1_000_000 and done.fields["records"] == "10,000 records"
