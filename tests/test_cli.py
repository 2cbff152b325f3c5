"""The command line: exit codes, JSON output, and every bad-input and fault case."""

from __future__ import annotations

import copy
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, subprocess_env
from faults import RunOnFirstProgress
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
    assert cli("list", "--store", local_store.url, "--json").json == {
        "backups": [],
        "unreadable": [],
    }
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


# -- the store: names, manifests, permissions, leases, bad input -----------------------------
def only_manifest(store_dir: Path, backup_id: str = "*") -> Path:
    [path] = store_dir.glob(f"*/{backup_id}/manifest.json")
    return path


def tree(root: Path, leave_out: Path) -> set[str]:
    """Every path under `root`, except those under `leave_out`."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p != leave_out and leave_out not in p.parents
    }


def modes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root.parent).as_posix(): oct(stat.S_IMODE(p.stat().st_mode))
        for p in [root, *root.rglob("*")]
    }


def test_export_refuses_names_leaving_its_folder_and_touches_nothing_outside(
    cli, shards, local_store, tmp_path
):
    store = ["--store", local_store.url]
    backed = cli("backup", "schemaless", *sources(shards), *store, "--json")
    assert backed.code == 0, backed.stdout
    backup_id = backed.json["backup_id"]
    manifest_path = only_manifest(tmp_path / "store")
    pristine = json.loads(manifest_path.read_text())
    sentinel = tmp_path / "exports" / "sentinel.txt"
    sentinel.parent.mkdir()
    sentinel.write_text("not the export's to touch")
    out = tmp_path / "exports" / "here"
    crafted_names = [
        f"{sentinel}.zst",  # absolute
        "../sentinel.txt.zst",
        "shard-000/../../sentinel.txt.zst",
        "../../escaped/deeper/x.zst",
    ]
    for name in crafted_names:
        crafted = copy.deepcopy(pristine)
        crafted["units"][0]["files"][0]["name"] = name
        manifest_path.write_text(json.dumps(crafted))
        before = tree(tmp_path, out)
        result = cli("export", "schemaless", *store, "--backup", backup_id, "--dir", str(out),
                     "--json")  # fmt: skip
        assert result.code == 1, (name, result.stdout)
        assert f"unsafe file name in backup schemaless/{backup_id}" in result.json["error"]
        assert sentinel.read_text() == "not the export's to touch", name
        assert tree(tmp_path, out) == before, name  # nothing made or removed outside --dir
        assert not out.exists() or not any(out.iterdir())

    manifest_path.write_text(json.dumps(pristine))
    exported = cli("export", "schemaless", "--store", local_store.url, "--dir", str(out), "--json")
    assert exported.code == 0, exported.stdout
    assert exported.json["files"] == len([f for u in pristine["units"] for f in u["files"]])
    again = cli("export", "schemaless", "--store", local_store.url, "--dir", str(out), "--json")
    assert again.code == 2 and "not empty" in again.json["error"]


def test_backups_exports_and_restored_sqlite_files_are_private(
    cli, shards, local_store, target_urls, tmp_path
):
    for url in shards:
        db_path(url).chmod(0o600)  # a private source
    old_umask = os.umask(0o022)
    try:
        backed = cli("backup", "schemaless", *sources(shards), "--store", local_store.url)
        exported = cli("export", "schemaless", "--store", local_store.url, "--dir",
                       str(tmp_path / "export"))  # fmt: skip
        restored = cli("restore", "schemaless", "--store", local_store.url, *targets(target_urls))
    finally:
        os.umask(old_umask)
    assert (backed.code, exported.code, restored.code) == (0, 0, 0), restored.stderr
    made = modes(tmp_path / "store") | modes(tmp_path / "export")
    made |= {url: oct(stat.S_IMODE(db_path(url).stat().st_mode)) for url in target_urls}
    files = {p: m for p, m in made.items() if not (tmp_path / p).is_dir()}
    folders = {p: m for p, m in made.items() if (tmp_path / p).is_dir()}
    assert set(files.values()) == {"0o600"}, files
    assert set(folders.values()) == {"0o700"}, folders
    assert compare_shards(shards, target_urls).equal


def test_one_unreadable_manifest_is_named_and_the_others_listed_and_verified(
    cli, shards, local_store, tmp_path
):
    store = ["--store", local_store.url]
    first = cli("backup", "schemaless", *sources(shards), *store, "--json").json["backup_id"]
    second = cli("backup", "schemaless", *sources(shards), *store, "--json").json["backup_id"]
    broken = only_manifest(tmp_path / "store", first)
    broken.write_text('{"format_version": 1, "technol')

    listed = cli("list", *store, "--json")
    assert listed.code == 0
    assert [b["backup_id"] for b in listed.json["backups"]] == [second]
    [unreadable] = listed.json["unreadable"]
    assert unreadable["backup_id"] == first and "unreadable" in unreadable["problem"]
    text = cli("list", *store)
    assert second in text.stdout and f"{first}" in text.stdout and "UNREADABLE" in text.stdout

    verified = cli("verify", *store, "--json")
    assert verified.code == 1
    assert verified.json["backups"] == [f"schemaless/{second}"]  # the other one was checked
    [problem] = verified.json["problems"]
    assert first in problem and "unreadable" in problem

    status = cli("status", *store, "--json")
    assert status.code == 0 and list(status.json["unreadable"]) == [f"schemaless/{first}"]
    pruned = cli("prune", *store, "--keep-last", "1", "--json")
    assert pruned.code == 0 and pruned.json["deleted"] == []
    assert broken.exists()  # left for a person to look at


def test_a_manifest_copied_into_another_backups_folder_fails_verify_and_restore(
    cli, shards, local_store, target_urls, tmp_path
):
    store = ["--store", local_store.url]
    first = cli("backup", "schemaless", *sources(shards), *store, "--json").json["backup_id"]
    second = cli("backup", "schemaless", *sources(shards), *store, "--json").json["backup_id"]
    only_manifest(tmp_path / "store", first).write_bytes(
        only_manifest(tmp_path / "store", second).read_bytes()
    )
    verified = cli("verify", *store, "--technology", "schemaless", "--backup", first, "--json")
    assert verified.code == 1 and "moved or altered" in verified.json["error"]
    restored = cli("restore", "schemaless", *store, "--backup", first, *targets(target_urls),
                   "--json")  # fmt: skip
    assert restored.code == 1 and "moved or altered" in restored.json["error"]
    assert not any(db_path(t).exists() for t in target_urls)


@pytest.mark.parametrize(
    "argv",
    [
        ("list", "--store", "s3://"),
        ("verify", "--store", "s3:///"),
        ("list", "--store", "://x"),
        ("list", "--store", "file:///dev/null/store"),
        ("export", "schemaless", "--store", "s3://", "--dir", "DIR"),
        ("backup", "schemaless", "--source", "sqlite://", "--store", "STORE"),
        ("backup", "zookeeper", "--source", "zk://[::1", "--store", "STORE"),
        ("restore", "zookeeper", "--store", "STORE", "--target", "zk://:x"),
        ("drill", "schemaless", "--source", "sqlite:///a", "--scratch", "zk://h", "--store=STORE"),
        ("backup", "schemaless", "--source", "postgresql://u@h:99999/db", "--store", "STORE"),
        ("backup", "zookeeper", "--source", "zk://h:1,h:70000/x", "--store", "STORE"),
        ("verify", "--store", "STORE", "--technology", "../x"),
        ("prune", "--store", "STORE", "--keep-days", "nan"),
        ("prune", "--store", "STORE", "--keep-last", "1", "--grace-hours", "inf"),
    ],
    ids=lambda argv: " ".join(argv),
)
def test_malformed_urls_are_bad_input(cli, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)  # where a relative store path would land
    argv = [a.replace("STORE", "s").replace("DIR", "d") for a in argv]
    result = cli(*argv, "--json")
    assert result.code == 2, result.stdout
    assert "unexpected" not in result.json["error"]
    assert set(os.listdir(tmp_path)) <= {"s"}  # no export folder, no folder named ':'


def test_s3_without_credentials_is_a_clear_message(
    cli_process, s3_store, shards, monkeypatch, tmp_path
):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = ["--store", s3_store.url, "--store-option",
             f"endpoint_url={s3_store.options['endpoint_url']}"]  # fmt: skip
    for argv in (["list", *store], ["backup", "schemaless", *sources(shards), *store]):
        result = cli_process(*argv, "--json")
        assert result.code == 2, result.stdout + result.stderr
        error = result.json["error"]
        assert "no credentials for the S3 store" in error and "AWS_ACCESS_KEY_ID" in error
        assert "unexpected" not in error


def test_prune_leaves_a_running_backup_alone(cli, cli_process, shards, local_store, target_urls):
    from backstop.flows.backup import backup
    from backstop.flows.params import BackupRequest
    from backstop.tasks.progress import reporting

    pruned = []

    def prune_now() -> None:  # while the backup holds still, half written
        pruned.append(cli_process("prune", "--store", local_store.url, "--keep-last", "1",
                                  "--grace-hours", "0", "--json"))  # fmt: skip

    with reporting(RunOnFirstProgress(prune_now, "backup")):
        outcome = backup(
            request=BackupRequest(technology="schemaless", sources=shards, store=local_store)
        )
    [result] = pruned
    assert result.code == 0, result.stderr
    assert result.json["deleted"] == []
    [kept] = result.json["kept"]
    assert kept["backup_id"] == outcome.backup_id and "backup running" in kept["reason"]
    restored = cli("restore", "schemaless", "--store", local_store.url,
                   "--backup", outcome.backup_id, *targets(target_urls), "--json")  # fmt: skip
    assert restored.code == 0, restored.stdout
    assert compare_shards(shards, target_urls).equal


def test_prune_leaves_a_backup_being_restored_alone(
    cli, cli_process, shards, local_store, target_urls
):
    from backstop.tasks.progress import reporting

    store = ["--store", local_store.url]
    first = cli("backup", "schemaless", *sources(shards), *store, "--json").json["backup_id"]
    cli("backup", "schemaless", *sources(shards), *store, "--json")
    pruned = []

    def prune_now() -> None:  # the policy drops `first`, which the restore is reading
        pruned.append(cli_process("prune", *store, "--keep-last", "1", "--json"))

    with reporting(RunOnFirstProgress(prune_now, "restore")):
        restored = cli("restore", "schemaless", *store, "--backup", first,
                       *targets(target_urls), "--json")  # fmt: skip
    assert restored.code == 0, restored.stdout
    [result] = pruned
    assert result.code == 0 and result.json["deleted"] == [], result.stdout
    assert any(k["backup_id"] == first and "restore in progress" in k["reason"]
               for k in result.json["kept"])  # fmt: skip
    assert compare_shards(shards, target_urls).equal


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
