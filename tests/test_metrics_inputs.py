"""`backstop metrics` on stores a hostile or broken writer left: crafted manifests and
drill records, read without Prefect or any database (the figures come from manifests
only). What an operator relies on: the exposition is valid (promtool's lint passes), a
manifest that cannot be exposed is counted unreadable rather than failing the whole
scrape, and a source with no good backup (or no passed drill) shows 0, so the staleness
alerts fire instead of going quiet with a missing series."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port, server_unavailable
from prometheus_client.parser import text_string_to_metric_families

from backstop.drivers.contract import StoredFile, StoredUnit
from backstop.flows.metrics import exposition
from backstop.tasks.manifest import (
    ConsistencyInfo,
    DriverInfo,
    Manifest,
    QualityResult,
    Role,
    new_backup_id,
    totals_of,
)
from backstop.tasks.store import StoreSpec

BACKSTOP = str(Path(sys.executable).parent / "backstop")
NOW = datetime.now(UTC)


def _manifest(
    backup_id: str, source: str, *, role: Role = Role.ADHOC, quality: str = "passed",
    finished: datetime = NOW, source_ids: tuple[str, ...] = (),
) -> dict[str, Any]:  # fmt: skip
    unit = StoredUnit(
        name="shard-000",
        source=source,
        records=7,
        files=[
            StoredFile(
                name="shard-000/cells.zst",
                format="schemaless-cells/1",
                records=7,
                bytes=100,
                sha256="0" * 64,
                raw_bytes=300,
                raw_sha256="0" * 64,
            )
        ],
    )
    manifest = Manifest(
        technology="schemaless",
        backup_id=backup_id,
        backstop_version="0",
        driver=DriverInfo(name="schemaless", version="0"),
        sources=[source],
        source_ids=list(source_ids),
        role=role,
        started_at=finished - timedelta(seconds=30),
        finished_at=finished,
        consistency=ConsistencyInfo(kind="snapshot"),
        units=[unit],
        totals=totals_of([unit]),
        quality=QualityResult(status=quality),
    )
    return json.loads(manifest.model_dump_json())


class Store:
    """A local store written by hand, one backup folder at a time."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spec = StoreSpec(url=root.as_uri())
        self.count = 0

    def backup_id(self, at: datetime = NOW) -> str:
        self.count += 1
        return f"{new_backup_id(at)[:-4]}{self.count:04x}"

    def put(self, manifest: dict[str, Any] | None = None, *, raw: str | None = None) -> Path:
        backup_id = manifest["backup_id"] if manifest else self.backup_id()
        folder = self.root / "schemaless" / backup_id
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(raw if raw is not None else json.dumps(manifest))
        return folder

    def metrics(self) -> tuple[str, dict[tuple[str, str | None, str | None], float]]:
        text = exposition(self.spec).decode()
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
        return text, {
            (s.name, s.labels.get("source"), s.labels.get("status")): s.value for s in samples
        }


def _promtool_lint(text: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    except FileNotFoundError:
        server_unavailable("promtool is not installed (run tests/servers/install.sh)")
        raise


def test_crafted_manifests_are_counted_unreadable_and_the_exposition_passes_promtool(
    tmp_path: Path,
):
    store = Store(tmp_path / "store")
    odd = 'sqlite:///odd "name"\\ with\nnewline.db'  # quotes, a backslash, a newline
    good = _manifest(store.backup_id(), odd)
    store.put(good)
    # The same source: an older backup whose finish time has no time zone (compared with
    # the aware one, and its duration computed from both).
    naive = _manifest(store.backup_id(NOW - timedelta(hours=1)), odd)
    naive["finished_at"] = naive["finished_at"].removesuffix("Z").split("+")[0]
    store.put(naive)
    # Unreadable, each its own way: a size no float holds, a negative record count, NaN,
    # a wrong type, a folder where the manifest should be, not JSON.
    huge = _manifest(store.backup_id(), "sqlite:///huge.db")
    huge["totals"]["bytes"] = 10**400
    store.put(huge)
    negative = _manifest(store.backup_id(), "sqlite:///negative.db")
    negative["totals"]["records"] = -5
    store.put(negative)
    store.put(raw=json.dumps(_manifest(store.backup_id(), "sqlite:///nan.db")).replace(
        '"records": 7', '"records": NaN', 1
    ))  # fmt: skip
    wrong = _manifest(store.backup_id(), "sqlite:///wrong.db")
    wrong["sources"] = 5
    store.put(wrong)
    (store.root / "schemaless" / store.backup_id() / "manifest.json").mkdir(parents=True)
    store.put(raw="{not json")

    text, values = store.metrics()
    linted = _promtool_lint(text)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert values[("backstop_store_unreadable_manifests", None, None)] == 6
    assert values[("backstop_store_backups", odd, "completed")] == 2
    assert values[("backstop_backup_last_success_timestamp_seconds", odd, None)] == pytest.approx(
        NOW.timestamp(), abs=1e-3
    )
    assert values[("backstop_backup_last_duration_seconds", odd, None)] == 30
    assert {source for _name, source, _status in values} == {odd, None}


def _drill(
    store: Store, source: str, record: Any, finished: datetime = NOW,
    source_ids: tuple[str, ...] = (),
) -> str:  # fmt: skip
    manifest = _manifest(
        store.backup_id(finished), source, role=Role.DRILL, finished=finished,
        source_ids=source_ids,
    )  # fmt: skip
    folder = store.put(manifest)
    if record is not None:
        text = record if isinstance(record, str) else json.dumps(record)
        (folder / "drill.json").write_text(text)
    return manifest["backup_id"]


def _passed(backup_id: str, at: datetime) -> dict[str, Any]:
    return {"status": "passed", "backup_id": backup_id, "passed_at": at.isoformat()}


def test_sources_without_a_good_backup_or_a_passed_drill_show_0_for_the_alerts(
    tmp_path: Path,
):
    store = Store(tmp_path / "store")
    # Drilled, and its drill passed an hour ago (older drills failed: no record).
    honest = "sqlite:///honest.db"
    _drill(store, honest, None, NOW - timedelta(days=3))
    passed = NOW - timedelta(hours=1)
    backup_id = store.backup_id(passed - timedelta(minutes=5))
    store.put(_manifest(backup_id, honest, role=Role.DRILL, finished=passed - timedelta(minutes=5)))
    (store.root / "schemaless" / backup_id / "drill.json").write_text(
        json.dumps(_passed(backup_id, passed))
    )
    # Drilled, and no drill passed that the store can show: the passed drills were pruned
    # (a failed drill leaves no record), or the records lie: a pass in the future (it
    # would silence the alert for decades), another backup's record, not a pass, not a
    # record at all.
    liar = "sqlite:///liar.db"
    _drill(store, liar, None)
    future = _drill(store, liar, "")
    (store.root / "schemaless" / future / "drill.json").write_text(
        json.dumps(_passed(future, NOW + timedelta(days=365 * 50)))
    )
    _drill(store, liar, _passed(honest, NOW))
    bad = _drill(store, liar, "")
    (store.root / "schemaless" / bad / "drill.json").write_text(
        json.dumps(_passed(bad, NOW) | {"status": "failed"})
    )
    _drill(store, liar, "[1, 2")
    _drill(store, liar, {"passed_at": "yesterday"})
    # Backed up, but every backup the store still holds failed its quality checks.
    failing = "sqlite:///failing.db"
    store.put(_manifest(store.backup_id(), failing, quality="failed"))

    _text, values = store.metrics()
    drills = {
        source: value
        for (name, source, _status), value in values.items()
        if name == "backstop_drill_last_success_timestamp_seconds"
    }
    assert drills == {honest: pytest.approx(passed.timestamp(), abs=1e-3), liar: 0}
    last = {
        source: value
        for (name, source, _status), value in values.items()
        if name == "backstop_backup_last_success_timestamp_seconds"
    }
    assert last == {failing: 0}  # so BackstopBackupStale fires: nothing restorable
    assert values[("backstop_store_backups", failing, "quality_failed")] == 1


def test_listen_serves_metrics_only_at_metrics_and_stops_on_sigterm(tmp_path: Path):
    store = Store(tmp_path / "store")
    store.put(_manifest(store.backup_id(), "sqlite:///a.db"))
    port = free_port()
    served = subprocess.Popen(
        [BACKSTOP, "metrics", "--store", store.spec.url, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        from servers.process import wait_for_port

        wait_for_port(served, port, 60, tmp_path / "no.log")
        base = f"http://127.0.0.1:{port}"
        scraped = httpx.get(f"{base}/metrics", timeout=30)
        assert scraped.status_code == 200 and "backstop_store_up 1.0" in scraped.text
        for path in ("/", "/etc/passwd", "/metrics/x", "/favicon.ico"):
            other = httpx.get(f"{base}{path}", timeout=30)
            assert other.status_code == 404 and "backstop_" not in other.text, path
    finally:
        served.send_signal(signal.SIGTERM)
        _out, err = served.communicate(timeout=30)
    assert served.returncode == 0, err


def test_a_fifo_or_a_device_in_place_of_a_store_file_is_unreadable_not_a_hang(tmp_path: Path):
    """A FIFO planted as a manifest or a drill record would block its read for ever (the
    scrape, the cron job); a link to /dev/zero would be read to the 256 MiB limit."""
    import os

    store = Store(tmp_path / "store")
    fifo = store.root / "schemaless" / store.backup_id() / "manifest.json"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    device = store.root / "schemaless" / store.backup_id() / "manifest.json"
    device.parent.mkdir(parents=True)
    device.symlink_to("/dev/zero")
    drilled = _drill(store, "sqlite:///drilled.db", None)
    os.mkfifo(store.root / "schemaless" / drilled / "drill.json")

    printed = subprocess.run(
        [BACKSTOP, "metrics", "--store", store.spec.url], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    samples = [s for f in text_string_to_metric_families(printed.stdout) for s in f.samples]
    values = {(s.name, s.labels.get("source")): s.value for s in samples}
    assert values[("backstop_store_unreadable_manifests", None)] == 2
    assert values[("backstop_drill_last_success_timestamp_seconds", "sqlite:///drilled.db")] == 0


def test_a_source_reached_by_a_new_url_is_one_series_under_its_newest_url(tmp_path: Path):
    """One database (one identity) backed up under an old URL, then a new one (a host
    alias, an added parameter), drilled under the old one still: one series, labelled
    with the newest backup's URL. Per URL, the old URL's newest backup (which prune
    always keeps) would hold a series at its age: BackstopBackupStale firing for ever."""
    store = Store(tmp_path / "store")
    ids = ("postgresql://db1.example:5432/cells#7301234567890",)
    old, new = "postgresql://db1/cells", "postgresql://db1.example/cells?sslmode=require"
    store.put(_manifest(store.backup_id(), old, finished=NOW - timedelta(days=3), source_ids=ids))
    store.put(_manifest(store.backup_id(), new, finished=NOW - timedelta(hours=1), source_ids=ids))
    drill = _drill(store, old, "", source_ids=ids)
    record = _passed(drill, NOW - timedelta(minutes=1))
    (store.root / "schemaless" / drill / "drill.json").write_text(json.dumps(record))
    # Another database: a series of its own.
    other = ("postgresql://db2.example:5432/cells#7309999999999",)
    store.put(_manifest(store.backup_id(), "postgresql://db2/cells", source_ids=other))

    _text, values = store.metrics()
    series = {(name, source) for name, source, _status in values if source}
    assert {source for _name, source in series} == {new, "postgresql://db2/cells"}
    assert values[("backstop_store_backups", new, "completed")] == 2
    assert values[("backstop_backup_last_success_timestamp_seconds", new, None)] == pytest.approx(
        (NOW - timedelta(hours=1)).timestamp(), abs=1e-3
    )
    assert values[("backstop_drill_last_success_timestamp_seconds", new, None)] > 0


RULES = Path(__file__).parent.parent / "deployments" / "prometheus" / "backstop-rules.yml"


def test_the_failed_quality_alert_fires_while_the_newest_backup_failed_only(tmp_path: Path):
    """promtool evaluates the rule file on the store's own exposition: a source whose
    newest backup failed its checks alerts; one with an old failed backup (kept until
    prune removes it, weeks maybe) and a newer good one does not."""
    import yaml

    store = Store(tmp_path / "store")
    recovered, failing = "sqlite:///recovered.db", "sqlite:///failing.db"
    store.put(_manifest(store.backup_id(), recovered, quality="failed",
                        finished=NOW - timedelta(days=2)))  # fmt: skip
    store.put(_manifest(store.backup_id(), recovered, finished=NOW - timedelta(days=1)))
    store.put(_manifest(store.backup_id(), failing, finished=NOW - timedelta(days=2)))
    store.put(_manifest(store.backup_id(), failing, quality="failed",
                        finished=NOW - timedelta(days=1)))  # fmt: skip
    [rule] = [
        r for group in yaml.safe_load(RULES.read_text())["groups"] for r in group["rules"]
        if r.get("alert") == "BackstopBackupFailedQuality"
    ]  # fmt: skip

    def annotations(source: str) -> dict[str, str]:  # promtool compares them too
        return {
            name: text.replace("{{ $labels.technology }}", "schemaless").replace(
                "{{ $labels.source }}", source
            )
            for name, text in rule["annotations"].items()
        }

    text = exposition(store.spec).decode()
    series = [
        {"series": f"{s.name}{{{','.join(f'{k}={v!r}' for k, v in sorted(s.labels.items()))}}}",
         "values": " ".join([repr(float(s.value))] * 10)}
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]  # fmt: skip
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": "5m",
                        "alertname": "BackstopBackupFailedQuality",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "technology": "schemaless",
                                    "source": failing,
                                },
                                "exp_annotations": annotations(failing),
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    try:
        checked = subprocess.run(
            ["promtool", "test", "rules", str(tmp_path / "test.yml")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except FileNotFoundError:
        server_unavailable("promtool is not installed (run tests/servers/install.sh)")
        raise
    assert checked.returncode == 0, checked.stdout + checked.stderr
