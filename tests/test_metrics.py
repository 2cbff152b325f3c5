"""`backstop metrics`: a store's backups as Prometheus metrics, scraped by a real
Prometheus (Debian's package) and read back with PromQL, and the alert rules checked
by promtool and evaluated by that Prometheus."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from conftest import free_port, server_unavailable
from prometheus_client.parser import text_string_to_metric_families

from backstop.flows.demo import make_schemaless_datastore
from backstop.tasks.manifest import BACKUP_ID

RULES = Path(__file__).parent.parent / "deployments" / "prometheus" / "backstop-rules.yml"
BACKSTOP = str(Path(sys.executable).parent / "backstop")


def _args(flag: str, urls: list[str]) -> list[str]:
    return [a for url in urls for a in (flag, url)]


def _by_source(result: list[dict]) -> dict[str, float]:
    return {r["metric"]["source"]: float(r["value"][1]) for r in result}


def _without_prefect() -> dict[str, str]:
    """The command needs no Prefect server: an API address nothing listens on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return env | {"PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}


def test_metrics_scraped_by_prometheus_match_the_store(cli, shards, tmp_path, local_store):
    from servers.prometheus import PrometheusServer, installed

    if not installed():
        server_unavailable("Prometheus is not installed (run tests/servers/install.sh)")
    other = make_schemaless_datastore(tmp_path / "other", shards=1, cells=500)
    url = local_store.url
    ids = []
    for sources in (shards, shards, other):
        result = cli("backup", "schemaless", *_args("--source", sources), "--store", url, "--json")
        assert result.code == 0, result.stderr
        ids.append(result.json["backup_id"])
    scratch = [f"sqlite:///{tmp_path / 'scratch.db'}"]
    drill = cli("drill", "schemaless", *_args("--source", other), *_args("--scratch", scratch),
                "--store", url, "--json")  # fmt: skip
    assert drill.code == 0, drill.stderr
    store = local_store.open()
    newest = store.read_manifest("schemaless", ids[1])
    first_source = ",".join(newest.sources)
    other_source = ",".join(store.read_manifest("schemaless", ids[2]).sources)
    passed_at = datetime.fromisoformat(
        store.read_drill_record("schemaless", drill.json["backup_id"])["passed_at"]
    ).timestamp()
    # A backup killed before its manifest: a folder nothing holds a lease on.
    leftover = Path(store.backup_dir("schemaless", "20200101T000000Z-dead"))
    assert BACKUP_ID.match(leftover.name)
    leftover.mkdir()

    # The text file for node_exporter's textfile collector, written by a process with
    # no Prefect server to talk to.
    prom = tmp_path / "textfile" / "backstop.prom"
    prom.parent.mkdir()
    written = subprocess.run(
        [BACKSTOP, "metrics", "--store", url, "--output", str(prom)],
        capture_output=True, text=True, timeout=120, env=_without_prefect(),
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    samples = {
        (s.name, s.labels.get("source"), s.labels.get("status")): s.value
        for family in text_string_to_metric_families(prom.read_text())
        for s in family.samples
    }
    assert samples[("backstop_backup_last_records", first_source, None)] == newest.totals.records
    assert samples[("backstop_backups_total", first_source, "completed")] == 2
    labels = {
        name
        for family in text_string_to_metric_families(prom.read_text())
        for s in family.samples
        for name in s.labels
    }
    assert labels == {"technology", "source", "status"}  # no per-shard label

    # The same figures served and scraped by a real Prometheus, which also loads the
    # alert rules.
    port = free_port()
    served = subprocess.Popen(
        [BACKSTOP, "metrics", "--store", url, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_without_prefect(),
    )  # fmt: skip
    prometheus = None
    try:
        from servers.process import wait_for_port

        wait_for_port(served, port, 60, tmp_path / "none.log")
        folder = tmp_path / "prometheus"
        folder.mkdir()
        prometheus = PrometheusServer(folder, [f"127.0.0.1:{port}"], [RULES]).start()

        records = prometheus.query_until(
            'backstop_backup_last_records{technology="schemaless"}', lambda r: len(r) == 2
        )
        assert _by_source(records) == {
            first_source: newest.totals.records,
            other_source: store.read_manifest("schemaless", ids[2]).totals.records,
        }
        completed = prometheus.query_until(
            'sum by (source) (backstop_backups_total{status="completed"})', lambda r: len(r) == 2
        )
        assert _by_source(completed) == {first_source: 2, other_source: 1}  # no drill counted
        last = _by_source(
            prometheus.api("query", query="backstop_backup_last_size_bytes")["result"]
        )
        assert last[first_source] == newest.totals.bytes
        finished = prometheus.api("query", query="backstop_backup_last_success_timestamp_seconds")
        assert _by_source(finished["result"])[first_source] == pytest.approx(
            newest.finished_at.timestamp(), abs=1e-3
        )
        drills = prometheus.api("query", query="backstop_drill_last_success_timestamp_seconds")
        assert _by_source(drills["result"]) == {other_source: pytest.approx(passed_at, abs=1e-3)}
        incomplete = prometheus.api("query", query="backstop_store_incomplete_backups")["result"]
        assert [float(r["value"][1]) for r in incomplete] == [1.0]

        # The rules load and evaluate against the live series: the leftover folder
        # makes the incomplete-backups alert pending (its `for:` has not run out).
        groups = prometheus.api("rules")["groups"]
        assert {r["health"] for g in groups for r in g["rules"]} == {"ok"}
        alerts = prometheus.query_until(
            'ALERTS{alertname="BackstopIncompleteBackups"}', lambda r: len(r) == 1
        )
        assert alerts[0]["metric"]["alertstate"] == "pending"
        stale = prometheus.api("query", query='ALERTS{alertname="BackstopBackupStale"}')
        assert stale["result"] == []
    finally:
        if prometheus:
            prometheus.stop()
        served.send_signal(signal.SIGTERM)
        _out, err = served.communicate(timeout=30)
    assert served.returncode == 0, err  # SIGTERM is how a service manager stops it


def test_alert_rules_pass_promtool():
    from servers.prometheus import installed

    if not installed():
        server_unavailable("promtool is not installed (run tests/servers/install.sh)")
    checked = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 5 rules found" in checked.stdout
