"""The command line: exit codes, JSON output, and every bad-input and fault case."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, subprocess_env
from test_schemaless_sqlite import db_path, file_digest

from backstop.flows.demo import compare_shards, make_schemaless_datastore

pytestmark = pytest.mark.integration


def sources(urls: list[str]) -> list[str]:
    return [arg for url in urls for arg in ("--source", url)]


def targets(urls: list[str]) -> list[str]:
    return [arg for url in urls for arg in ("--target", url)]


def data_files(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*.zst"))


def test_done_when_commands_through_the_console_script(cli_process, shards, target_urls, tmp_path):
    store = (tmp_path / "S").as_uri()
    backed = cli_process("backup", "schemaless", *sources(shards), "--store", store, "--json")
    assert backed.code == 0, backed.stderr
    out = backed.json
    assert out["status"] == "completed" and out["technology"] == "schemaless"
    assert out["records"] == 6000 and out["bytes"] > 0 and out["consistency"] == "snapshot"
    assert {"backup_id", "duration_s"} <= out.keys()

    restored = cli_process(
        "restore", "schemaless", "--store", store, *targets(target_urls), "--json"
    )
    assert restored.code == 0, restored.stderr
    assert restored.json["backup_id"] == out["backup_id"] and restored.json["verified"]
    comparison = compare_shards(shards, target_urls)
    assert comparison.equal and comparison.cells == 6000


def test_unknown_technology_exits_2_and_lists_the_known_ones(cli, local_store, shards):
    result = cli("backup", "mongodbx", *sources(shards), "--store", local_store.url)
    assert result.code == 2
    assert "unknown technology 'mongodbx'" in result.stderr
    assert "schemaless" in result.stderr
    as_json = cli("backup", "mongodbx", *sources(shards), "--store", local_store.url, "--json")
    assert as_json.code == 2 and "schemaless" in as_json.json["error"]


def test_usage_errors_exit_2(cli, local_store):
    with pytest.raises(SystemExit) as info:
        cli("backup", "schemaless", "--store", local_store.url)  # no --source
    assert info.value.code == 2
    result = cli("backup", "schemaless", "--source", "http://x", "--store", local_store.url)
    assert result.code == 2 and "not a URL this driver understands" in result.stderr
    result = cli("list", "--store", local_store.url, "--store-option", "novalue")
    assert result.code == 2 and "KEY=VALUE" in result.stderr


def test_nonexistent_source_exits_1_and_writes_no_manifest(cli, tmp_path, local_store):
    missing = f"sqlite:///{tmp_path / 'nope.db'}"
    result = cli("backup", "schemaless", "--source", missing, "--store", local_store.url, "--json")
    assert result.code == 1
    assert "does not exist" in result.json["error"]
    assert not (tmp_path / "nope.db").exists()  # the source was not created either
    store = local_store.open()
    assert store.folders() == []  # no manifest, and the partial folder is gone


def test_unreachable_server_is_retried_then_exits_1(cli, local_store):
    port = free_port()  # nothing listens here
    url = f"postgresql+psycopg://backstop:Sup3rSecretPw@127.0.0.1:{port}/cells"
    started = time.monotonic()
    result = cli("backup", "schemaless", "--source", url, "--store", local_store.url, "--json")
    assert result.code == 1
    assert "Sup3rSecretPw" not in result.stdout + result.stderr
    assert "OperationalError" in result.json["error"]
    assert time.monotonic() - started >= 0.3  # three retries with 0.1 s delays happened
    assert local_store.open().folders() == []


@pytest.mark.parametrize("which", [0, 1])
def test_flipped_byte_fails_verify_naming_the_file_and_restore_refuses(
    cli, shards, local_store, target_urls, tmp_path, which
):
    backed = cli("backup", "schemaless", *sources(shards), "--store", local_store.url, "--json")
    assert backed.code == 0
    damaged = data_files(tmp_path / "store")[which]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 3] ^= 0x40
    damaged.write_bytes(bytes(data))
    name = damaged.relative_to(tmp_path / "store").as_posix()

    verified = cli("verify", "--store", local_store.url, "--json")
    assert verified.code == 1
    assert verified.json["ok"] is False
    assert any(name in p for p in verified.json["problems"]), verified.json
    assert len(verified.json["problems"]) == 1

    restored = cli(
        "restore", "schemaless", "--store", local_store.url, *targets(target_urls), "--json"
    )
    assert restored.code == 1
    assert name in restored.json["error"] and "nothing was restored" in restored.json["error"]
    assert not any(db_path(t).exists() for t in target_urls)


def test_backup_killed_before_its_manifest_is_invisible(
    prefect_harness, tmp_path, target_urls, cli
):
    big = make_schemaless_datastore(tmp_path / "big", shards=1, cells=150_000)
    store_dir = tmp_path / "store"
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "backstop"),
            "backup",
            "schemaless",
            *sources(big),
            "--store",
            store_dir.as_uri(),
            "--json",
        ],
        env=subprocess_env(prefect_harness),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not data_files(store_dir) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the backup finished before it could be killed"
    assert data_files(store_dir), "the backup had not started writing"
    assert not list(store_dir.rglob("manifest.json"))

    listed = cli("list", "--store", store_dir.as_uri(), "--json")
    assert listed.code == 0 and listed.json["backups"] == []
    restored = cli(
        "restore", "schemaless", "--store", store_dir.as_uri(), *targets(target_urls[:1]), "--json"
    )
    assert restored.code == 2 and "no complete schemaless backup" in restored.json["error"]
    folders = target_urls[:1]
    assert not db_path(folders[0]).exists()


def test_restore_into_non_empty_target_without_mode_is_refused_untouched(
    cli, shards, local_store, target_urls
):
    assert cli("backup", "schemaless", *sources(shards), "--store", local_store.url).code == 0
    # A target that already holds other data.
    other = make_schemaless_datastore(
        db_path(target_urls[0]).parent / "other", shards=2, cells=10, seed=99
    )
    for src, dst in zip(other, target_urls, strict=True):
        db_path(dst).write_bytes(db_path(src).read_bytes())
    before = [file_digest(t) for t in target_urls]
    result = cli("restore", "schemaless", "--store", local_store.url, *targets(target_urls))
    assert result.code == 2
    assert "already holds 5 cells" in result.stderr and "--mode overwrite" in result.stderr
    assert [file_digest(t) for t in target_urls] == before


def test_password_in_a_source_url_appears_nowhere(cli, tmp_path, local_store, target_urls):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort, LogSort
    from prefect.logging.handlers import APILogWorker

    secret = "Pa55-w0rd-nobody-sees"
    [plain] = make_schemaless_datastore(tmp_path / "pw", shards=1, cells=200)
    url = f"sqlite://operator:{secret}@/{db_path(plain)}"
    backed = cli(
        "-v", "backup", "schemaless", "--source", url, "--store", local_store.url, "--json"
    )
    assert backed.code == 0, backed.stderr
    restored = cli(
        "-v",
        "restore",
        "schemaless",
        "--store",
        local_store.url,
        "--target",
        f"sqlite://operator:{secret}@/{db_path(target_urls[0])}",
        "--json",
    )
    assert restored.code == 0, restored.stderr
    listed = cli("list", "--store", local_store.url, "--json")
    assert "operator:***@" in json.dumps(listed.json)

    seen = [backed.stdout, backed.stderr, restored.stdout, restored.stderr, listed.stdout]
    seen += [p.read_text() for p in (tmp_path / "store").rglob("manifest.json")]
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        api_logs = [log.message for log in client.read_logs(sort=LogSort.TIMESTAMP_DESC, limit=200)]
        artifacts = [
            a.model_dump_json()
            for a in client.read_artifacts(sort=ArtifactSort.CREATED_DESC, limit=50)
        ]
        runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=2)
        parameters = [json.dumps(r.parameters, default=str) for r in runs]
    # The records are there, redacted; parameters carry a placeholder, not the secret.
    assert any("operator:***@" in line for line in api_logs)
    assert any("operator:***@" in a for a in artifacts)
    assert all("${env:BACKSTOP_" in p for p in parameters)
    seen += api_logs + artifacts + parameters
    leaks = [text[:200] for text in seen if secret in text]
    assert not leaks


def test_list_and_verify_report_backups(cli, shards, local_store):
    assert cli("list", "--store", local_store.url, "--json").json == {"backups": []}
    empty = cli("verify", "--store", local_store.url, "--json")
    assert empty.code == 1 and "no complete backup" in empty.json["problems"][0]
    first = cli("backup", "schemaless", *sources(shards), "--store", local_store.url, "--json")
    second = cli("backup", "schemaless", *sources(shards), "--store", local_store.url, "--json")
    listed = cli("list", "--store", local_store.url, "--json").json["backups"]
    assert [b["backup_id"] for b in listed] == sorted(
        [first.json["backup_id"], second.json["backup_id"]]
    )
    text = cli("list", "--store", local_store.url)
    assert first.json["backup_id"] in text.stdout and "snapshot" in text.stdout
    checked = cli(
        "verify",
        "--store",
        local_store.url,
        "--technology",
        "schemaless",
        "--backup",
        "latest",
        "--json",
    )
    assert checked.code == 0 and checked.json["ok"]
    assert checked.json["backups"] == [f"schemaless/{second.json['backup_id']}"]


def test_demo_reports_equality_as_json(cli):
    result = cli("demo", "--cells", "3000", "--json")
    assert result.code == 0, result.stderr
    out = result.json
    assert out["status"] == "passed" and out["equal"] and out["cells"] == 3000
    assert out["wall_time_s"] > 0


def test_restore_target_rows_keep_bodies_byte_exact(cli, shards, local_store, target_urls):
    cli("backup", "schemaless", *sources(shards), "--store", local_store.url)
    assert cli("restore", "schemaless", "--store", local_store.url, *targets(target_urls)).code == 0
    with sqlite3.connect(db_path(shards[0])) as a, sqlite3.connect(db_path(target_urls[0])) as b:
        q = "SELECT hex(body), length(body), typeof(body) FROM cells ORDER BY added_id"
        assert a.execute(q).fetchall() == b.execute(q).fetchall()


def test_one_failing_shard_fails_the_backup_and_leaves_no_files(cli, shards, tmp_path, local_store):
    broken = f"sqlite:///{tmp_path / 'missing-shard.db'}"
    result = cli(
        "backup", "schemaless", *sources([*shards, broken]), "--store", local_store.url, "--json"
    )
    assert result.code == 1 and "shard-002" in result.json["error"]
    assert local_store.open().folders() == []
    assert not list((tmp_path / "store").rglob("*.zst"))
