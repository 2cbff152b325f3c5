"""What an operator watches, from one set of runs: the artifacts, events and task logs
they leave on the real Prefect server (read back through its REST API, as the UI and
automations see them), and `backstop metrics` scraped by a real Prometheus (Debian's
package) loading the alert rules.

The runs (shared by the module): two backups of one datastore (A), one of another (B),
a restore of A and an overwrite of that restore (so a safety backup of the targets),
and a drill of B."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import CliResult, free_port, server_unavailable
from prometheus_client.parser import text_string_to_metric_families

from backstop.flows.demo import make_schemaless_datastore
from backstop.tasks.artifacts import artifact_key
from backstop.tasks.manifest import BACKUP_ID, Manifest
from backstop.tasks.store import StoreSpec

ROOT = Path(__file__).parent.parent
AUTOMATIONS = ROOT / "deployments" / "automations.yaml"
RULES = ROOT / "deployments" / "prometheus" / "backstop-rules.yml"
BACKSTOP = str(Path(sys.executable).parent / "backstop")


@dataclass
class Runs:
    api: str
    since: datetime
    store: StoreSpec
    first: list[str]  # datastore A's shards
    other: list[str]  # datastore B
    targets: list[str]
    first_ids: list[str]  # two backups of A, oldest first
    other_id: str
    safety_id: str
    drill_id: str

    def manifest(self, backup_id: str) -> Manifest:
        return self.store.open().read_manifest("schemaless", backup_id)


def _args(flag: str, urls: list[str]) -> list[str]:
    return [a for url in urls for a in (flag, url)]


def _cli(*argv: str) -> CliResult:
    from backstop.flows.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    result = CliResult(code, out.getvalue(), err.getvalue())
    assert result.code == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def runs(prefect_harness: str, datastore_template, tmp_path_factory) -> Runs:
    folder = tmp_path_factory.mktemp("monitoring")
    (folder / "source").mkdir()
    first = []
    for path in datastore_template:
        shutil.copyfile(path, folder / "source" / path.name)
        first.append(f"sqlite:///{folder / 'source' / path.name}")
    other = make_schemaless_datastore(folder / "other", shards=1, cells=500)
    targets = [f"sqlite:///{folder / f'target{i}.db'}" for i in range(len(first))]
    store = StoreSpec(url=(folder / "store").as_uri())
    since = datetime.now(UTC)

    def back_up(sources: list[str]) -> str:
        argv = _args("--source", sources)
        return _cli("backup", "schemaless", *argv, "--store", store.url, "--json").json["backup_id"]

    first_ids = [back_up(first)]
    other_id = back_up(other)
    restore = ["restore", "schemaless", "--store", store.url, *_args("--target", targets),
               "--backup", first_ids[0], "--json"]  # fmt: skip
    _cli(*restore)
    # Overwriting what the first restore wrote takes a safety backup of the targets.
    safety_id = _cli(*restore, "--mode", "overwrite").json["safety_backup"]
    scratch = ["--scratch", f"sqlite:///{folder / 'scratch.db'}"]
    drill = _cli("drill", "schemaless", *_args("--source", other), *scratch,
                 "--store", store.url, "--json")  # fmt: skip
    first_ids.append(back_up(first))
    return Runs(prefect_harness, since, store, first, other, targets, first_ids, other_id,
                safety_id, drill.json["backup_id"])  # fmt: skip


# -- on the Prefect server -----------------------------------------------------------------
def _post(api: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{api}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def _until(read: Callable[[], Any], ready: Callable[[Any], bool], what: str) -> Any:
    """The server persists events and logs in batches: read until `ready` holds."""
    stop = time.monotonic() + 120
    while True:
        found = read()
        if ready(found) or time.monotonic() > stop:
            assert ready(found), f"{what} never reached the server: {found}"
            return found
        time.sleep(1)


def test_artifacts_are_keyed_per_source_and_role(runs: Runs):
    expected = {
        artifact_key("backup", "schemaless", runs.first, "adhoc"): runs.first_ids[-1],
        artifact_key("backup", "schemaless", runs.other, "adhoc"): runs.other_id,
        artifact_key("backup", "schemaless", runs.targets, "safety"): runs.safety_id,
        artifact_key("backup", "schemaless", runs.other, "drill"): runs.drill_id,
    }
    # Asked for by key: the session's server holds every earlier test's artifacts, and a
    # page of "latest" ones (found by CI, after 500 tests) need not include these.
    body = {"artifacts": {"key": {"any_": list(expected)}}, "limit": 200}
    latest = {a["key"]: a for a in _post(runs.api, "/artifacts/latest/filter", body)}
    # Two sources are two keys; the drill of B (after B's backup) and the safety backup
    # (of the targets) did not replace a source's own newest artifact.
    assert len(set(expected)) == 4 and set(expected) <= set(latest)
    for key, backup_id in expected.items():
        assert backup_id in latest[key]["description"], (key, latest[key]["description"])
    shown = latest[next(iter(expected))]["description"]
    assert runs.first[0].removeprefix("sqlite:///") in shown  # the source, in words


def test_events_carry_the_role_and_the_stale_source_automation_ignores_safety_and_drill(
    runs: Runs,
):
    def completed() -> list[dict[str, Any]]:
        body = {
            "filter": {
                "occurred": {"since": runs.since.isoformat()},
                "event": {"name": ["backstop.backup.completed"]},
                "order": "ASC",
            },
            "limit": 50,
        }
        return _post(runs.api, "/events/filter", body)["events"]

    events = _until(completed, lambda found: len(found) >= 5, "five backup.completed events")
    roles = {e["payload"]["backup_id"]: e["resource"]["backstop.role"] for e in events}
    assert roles == {
        runs.first_ids[0]: "adhoc",
        runs.first_ids[1]: "adhoc",
        runs.other_id: "adhoc",
        runs.safety_id: "safety",
        runs.drill_id: "drill",
    }
    assert all(e["payload"]["role"] == e["resource"]["backstop.role"] for e in events)

    # The automation's trigger as the server evaluates it, on the events as the server
    # received them: only ordinary backups are backups of a source.
    from prefect.server.events.schemas.automations import EventTrigger
    from prefect.server.events.schemas.events import ReceivedEvent

    [stale] = [
        a for a in yaml.safe_load(AUTOMATIONS.read_text())["automations"]
        if a["name"] == "backstop stale source"
    ]  # fmt: skip
    trigger = EventTrigger.model_validate(stale["trigger"])
    counted = {
        e["payload"]["backup_id"] for e in events if trigger.covers(ReceivedEvent.model_validate(e))
    }
    assert counted == {*runs.first_ids, runs.other_id}


def test_shard_tasks_log_their_figures_in_the_run_logs(runs: Runs):
    manifest = runs.manifest(runs.first_ids[0])
    folder = runs.first[0].removeprefix("sqlite:///").rsplit("/", 1)[0]

    def snapshot_lines() -> list[dict[str, Any]]:
        body = {
            "logs": {"timestamp": {"after_": runs.since.isoformat()}},
            "limit": 200,
            "sort": "TIMESTAMP_ASC",
        }
        return [
            log
            for log in _post(runs.api, "/logs/filter", body)
            if log["message"].startswith("snapshot ")
            and log["task_run_id"]
            and folder in log["message"]
        ]

    # A's first backup: one line per shard, from the snapshot tasks' runs (the oldest
    # lines: the page of 200 holds them).
    lines = _until(snapshot_lines, lambda found: len(found) >= len(manifest.units), "lines")
    for unit in manifest.units:
        line = next(
            log["message"] for log in lines if log["message"].startswith(f"snapshot {unit.name}: ")
        )
        assert f"records={unit.records} " in line
        assert f"bytes={sum(f.bytes for f in unit.files)} " in line
        assert "seconds=" in line and "consistency={" in line


# -- metrics, and Prometheus --------------------------------------------------------------
def _prometheus_installed() -> None:
    from servers.prometheus import installed

    if not installed():
        server_unavailable("Prometheus is not installed (run tests/servers/install.sh)")


def _without_prefect() -> dict[str, str]:
    """`backstop metrics` needs no Prefect server: an API address nothing listens on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return env | {"PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}


def _by_source(result: list[dict]) -> dict[str, float]:
    return {r["metric"]["source"]: float(r["value"][1]) for r in result}


def test_metrics_scraped_by_prometheus_match_the_store(runs: Runs, tmp_path: Path):
    _prometheus_installed()
    from servers.process import wait_for_port
    from servers.prometheus import PrometheusServer

    store = runs.store.open()
    newest, other = runs.manifest(runs.first_ids[-1]), runs.manifest(runs.other_id)
    first_source, other_source = ",".join(newest.sources), ",".join(other.sources)
    record = store.read_drill_record("schemaless", runs.drill_id)
    passed_at = datetime.fromisoformat(record["passed_at"]).timestamp()
    # A backup killed before its manifest: a folder nothing holds a lease on.
    leftover = Path(store.backup_dir("schemaless", "20200101T000000Z-dead"))
    assert BACKUP_ID.match(leftover.name)
    leftover.mkdir()

    # The text file for node_exporter's textfile collector.
    prom = tmp_path / "textfile" / "backstop.prom"
    prom.parent.mkdir()
    written = subprocess.run(
        [BACKSTOP, "metrics", "--store", runs.store.url, "--output", str(prom)],
        capture_output=True, text=True, timeout=120, env=_without_prefect(),
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    samples = [s for f in text_string_to_metric_families(prom.read_text()) for s in f.samples]
    values = {(s.name, s.labels.get("source"), s.labels.get("status")): s.value for s in samples}
    assert values[("backstop_backup_last_records", first_source, None)] == newest.totals.records
    assert values[("backstop_store_backups", first_source, "completed")] == 2
    assert {name for s in samples for name in s.labels} == {"technology", "source", "status"}

    # The same figures served, scraped by Prometheus, which also loads the alert rules.
    port = free_port()
    served = subprocess.Popen(
        [BACKSTOP, "metrics", "--store", runs.store.url, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_without_prefect(),
    )  # fmt: skip
    prometheus = None
    try:
        wait_for_port(served, port, 60, tmp_path / "no.log")
        (tmp_path / "prometheus").mkdir()
        prometheus = PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{port}"], [RULES])
        prometheus.start()

        records = prometheus.query_until(
            'backstop_backup_last_records{technology="schemaless"}', lambda r: len(r) == 2
        )
        assert _by_source(records) == {
            first_source: newest.totals.records,
            other_source: other.totals.records,
        }
        completed = prometheus.api(
            "query", query='sum by (source) (backstop_store_backups{status="completed"})'
        )["result"]
        # Neither the safety backup (of the targets) nor the drill's counts.
        assert _by_source(completed) == {first_source: 2, other_source: 1}
        size = prometheus.api("query", query="backstop_backup_last_size_bytes")["result"]
        assert _by_source(size)[first_source] == newest.totals.bytes
        finished = prometheus.api("query", query="backstop_backup_last_success_timestamp_seconds")[
            "result"
        ]
        assert _by_source(finished)[first_source] == pytest.approx(
            newest.finished_at.timestamp(), abs=1e-3
        )
        drills = prometheus.api("query", query="backstop_drill_last_success_timestamp_seconds")
        assert _by_source(drills["result"]) == {other_source: pytest.approx(passed_at, abs=1e-3)}
        incomplete = prometheus.api("query", query="backstop_store_incomplete_backups")["result"]
        assert [float(r["value"][1]) for r in incomplete] == [1.0]

        # The rules load and evaluate on the live series: the leftover folder makes the
        # incomplete-backups alert pending (its `for:` has not run out); nothing is stale.
        groups = prometheus.api("rules")["groups"]
        assert {r["health"] for g in groups for r in g["rules"]} == {"ok"}
        alerts = prometheus.query_until(
            'ALERTS{alertname="BackstopIncompleteBackups"}', lambda r: len(r) == 1
        )
        assert alerts[0]["metric"]["alertstate"] == "pending"
        stale = prometheus.api("query", query='ALERTS{alertname="BackstopBackupStale"}')
        assert stale["result"] == []

        # The service stopped (SIGTERM, as a service manager does): its series go, and
        # the alert that says so is pending (every other alert needs the series).
        served.send_signal(signal.SIGTERM)
        served.communicate(timeout=30)
        absent = prometheus.query_until(
            'ALERTS{alertname="BackstopMetricsAbsent"}', lambda r: len(r) == 1
        )
        assert absent[0]["metric"]["alertstate"] == "pending"
    finally:
        if prometheus:
            prometheus.stop()
        served.send_signal(signal.SIGTERM)
        _out, err = served.communicate(timeout=30)
        leftover.rmdir()
    assert served.returncode == 0, err  # SIGTERM is how a service manager stops it


def test_alert_rules_pass_promtool():
    _prometheus_installed()
    checked = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
