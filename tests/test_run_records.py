"""What a run leaves on the Prefect server for an operator: artifacts keyed per source
and role, events carrying the backup's role (so the stale-source automation ignores
safety and drill backups), and each shard task's figures in the run's logs. Read back
through the real server's REST API, as the UI and automations see them."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from backstop.flows.demo import make_schemaless_datastore
from backstop.tasks.artifacts import artifact_key

AUTOMATIONS = Path(__file__).parent.parent / "deployments" / "automations.yaml"


def _args(flag: str, urls: list[str]) -> list[str]:
    return [a for url in urls for a in (flag, url)]


def _post(api: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{api}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def _until(read, ready, what: str, deadline_s: float = 120) -> Any:
    """The server persists events and logs in batches: read until `ready` holds."""
    stop = time.monotonic() + deadline_s
    while True:
        found = read()
        if ready(found) or time.monotonic() > stop:
            assert ready(found), f"{what} never reached the server: {found}"
            return found
        time.sleep(1)


def _events(api: str, since: datetime) -> list[dict[str, Any]]:
    body = {
        "filter": {
            "occurred": {"since": since.isoformat()},
            "event": {"prefix": ["backstop."]},
            "order": "ASC",
        },
        "limit": 50,
    }
    return _post(api, "/events/filter", body)["events"]


def _logs(api: str, since: datetime) -> list[dict[str, Any]]:
    body = {
        "logs": {"timestamp": {"after_": since.isoformat()}},
        "limit": 200,
        "sort": "TIMESTAMP_ASC",
    }
    return _post(api, "/logs/filter", body)


def test_artifacts_events_and_logs_name_the_source_and_its_role(
    cli, shards, tmp_path, local_store, prefect_harness
):
    api = prefect_harness
    since = datetime.now(UTC)
    other = make_schemaless_datastore(tmp_path / "other", shards=1, cells=500)
    targets = [f"sqlite:///{tmp_path / f'target{i}.db'}" for i in range(len(shards))]
    scratch = [f"sqlite:///{tmp_path / 'scratch.db'}"]

    first = cli("backup", "schemaless", *_args("--source", shards), "--store", local_store.url,
                "--json")  # fmt: skip
    second = cli("backup", "schemaless", *_args("--source", other), "--store", local_store.url,
                 "--json")  # fmt: skip
    assert first.code == 0 and second.code == 0, first.stderr + second.stderr
    backup_id = first.json["backup_id"]
    restore = ["restore", "schemaless", "--store", local_store.url, *_args("--target", targets),
               "--backup", backup_id, "--json"]  # fmt: skip
    assert cli(*restore).code == 0
    # Overwriting what the first restore wrote takes a safety backup of the targets.
    overwrite = cli(*restore, "--mode", "overwrite")
    assert overwrite.code == 0, overwrite.stderr
    safety_id = overwrite.json["safety_backup"]
    drill = cli("drill", "schemaless", *_args("--source", other), *_args("--scratch", scratch),
                "--store", local_store.url, "--json")  # fmt: skip
    assert drill.code == 0, drill.stderr

    # Artifacts: one key per source set and role; the latest of the first source's key
    # is still its own backup after the safety and drill backups were taken.
    latest = {
        a["key"]: a
        for a in _post(api, "/artifacts/latest/filter", {"limit": 200})
        if a["key"].startswith("backstop-backup-schemaless-")
    }
    expected = {
        artifact_key("backup", "schemaless", shards, "adhoc"): backup_id,
        artifact_key("backup", "schemaless", other, "adhoc"): second.json["backup_id"],
        artifact_key("backup", "schemaless", targets, "safety"): safety_id,
        artifact_key("backup", "schemaless", other, "drill"): drill.json["backup_id"],
    }
    assert len(set(expected)) == 4 and set(expected) <= set(latest)
    for key, shown_id in expected.items():
        assert shown_id in latest[key]["description"], (key, latest[key]["description"])
    assert shards[0].removeprefix("sqlite:///") in latest[next(iter(expected))]["description"]

    # Events: the role rides in the resource's labels and the payload.
    completed = _until(
        lambda: [e for e in _events(api, since) if e["event"] == "backstop.backup.completed"],
        lambda found: len(found) >= 4,
        "four backstop.backup.completed events",
    )
    roles = {e["payload"]["backup_id"]: e["resource"]["backstop.role"] for e in completed}
    assert roles == {
        backup_id: "adhoc",
        second.json["backup_id"]: "adhoc",
        safety_id: "safety",
        drill.json["backup_id"]: "drill",
    }
    assert all(e["payload"]["role"] == e["resource"]["backstop.role"] for e in completed)

    # The stale-source automation, evaluated by the server's own trigger model on the
    # events as the server received them: it counts ordinary backups only.
    from prefect.server.events.schemas.automations import EventTrigger
    from prefect.server.events.schemas.events import ReceivedEvent

    [stale] = [
        a for a in yaml.safe_load(AUTOMATIONS.read_text())["automations"]
        if a["name"] == "backstop stale source"
    ]  # fmt: skip
    trigger = EventTrigger.model_validate(stale["trigger"])
    counted = {
        e["payload"]["backup_id"]
        for e in completed
        if trigger.covers(ReceivedEvent.model_validate(e))
    }
    assert counted == {backup_id, second.json["backup_id"]}

    # Logs: each snapshot task's figures, in the run's logs on the server.
    manifest = local_store.open().read_manifest("schemaless", backup_id)
    wanted = {f"snapshot {u.name}: " for u in manifest.units}
    lines = _until(
        lambda: [
            log
            for log in _logs(api, since)
            if log["message"].startswith(tuple(wanted))
            and log["task_run_id"]
            and shards[0].removeprefix("sqlite:///").rsplit("/", 1)[0] in log["message"]
        ],
        lambda found: len(found) >= len(wanted),
        "the snapshot tasks' figures",
    )
    for unit in manifest.units:
        [line] = [
            log["message"] for log in lines if log["message"].startswith(f"snapshot {unit.name}: ")
        ]
        assert f"records={unit.records} " in line
        assert f"bytes={sum(f.bytes for f in unit.files)} " in line
        assert "seconds=" in line and "consistency={" in line
