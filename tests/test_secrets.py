"""Secrets never reach what Prefect stores, and every driver call gets resolved URLs.

The CLI moves plain-text secrets (URL passwords, secret query parameters, store
credentials) into its own environment and hands the flows ${env:} references; a flow
called any other way (a deployment, the UI, Python) refuses a plain-text secret. What
Prefect stored is read back through its client (flow and task runs, their states,
logs, artifacts, events) and searched for the secret.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from backstop.drivers.errors import BadInputError
from backstop.drivers.redact import (
    is_secret_name,
    literal_option_secrets,
    literal_url_secrets,
    redact_url,
    resolve_placeholders,
    stash_option_secrets,
    stash_url_secrets,
)
from backstop.drivers.registry import get_driver
from backstop.flows.params import BackupRequest, RestoreRequest
from backstop.tasks.secrets import hide_secrets, literal_secrets_in
from backstop.tasks.store import StoreSpec


# -- finding and moving secrets (no server) -------------------------------------------------
@pytest.mark.parametrize(
    ("url", "found"),
    [
        ("postgresql+psycopg://u:pw@h/db", ["the password in user:password@"]),
        ("postgresql+psycopg://u@h/db?sslmode=require&password=pw", ["query parameter password="]),
        (
            "mongodb://h/?tlsCertificateKeyFilePassword=pw&tlsCertificateKeyFile=/k.pem",
            ["query parameter tlsCertificateKeyFilePassword="],
        ),
        (
            "s3://bucket/x?key=AK&secret=SK&token=T",
            ["query parameter key=", "query parameter secret=", "query parameter token="],
        ),
        ("postgresql+psycopg://u:${secret:team/pg}@h/db?password=${env:PW}", []),
        ("mongodb://${env:DOCSTORE_HOST}/", []),
        ("zk://h:2181/app?admin_port=8080", []),
        ("sqlite:///tmp/a.db", []),
    ],
)
def test_literal_secrets_in_urls_are_found(url: str, found: list[str]):
    assert literal_url_secrets(url) == found


def test_stashed_url_resolves_to_exactly_the_url_given():
    url = "postgresql+psycopg://bob:p%40ss%2Fw0rd@db:5432/cells?password=q%26r&sslmode=require"
    hidden = stash_url_secrets(url)
    assert "p%40ss" not in hidden and "q%26r" not in hidden
    assert literal_url_secrets(hidden) == []
    assert redact_url(hidden) == redact_url(url)  # shown, stored in manifests, the same
    assert resolve_placeholders(hidden) == url


def test_half_a_reference_is_refused_rather_than_guessed():
    with pytest.raises(BadInputError, match=r"one \$\{env:NAME\}"):
        stash_url_secrets("postgresql://u:abc${env:PW}@h/db")


def test_store_option_secrets_nested_ones_included():
    options = {
        "endpoint_url": "http://127.0.0.1:9000",
        "key": "AKIA-literal",
        "secret": "${secret:s3-secret}",
        "client_kwargs": {"aws_session_token": "tok", "region_name": "eu-west-1"},
        "token": "anon",  # gcsfs: a mode, not a secret
        "use_ssl": False,
    }
    assert literal_option_secrets(options) == ["key", "client_kwargs.aws_session_token"]
    hidden = stash_option_secrets(options)
    assert literal_option_secrets(hidden) == []
    assert hidden["client_kwargs"]["region_name"] == "eu-west-1"
    assert hidden["secret"] == "${secret:s3-secret}" and hidden["token"] == "anon"
    assert resolve_placeholders(hidden["key"]) == "AKIA-literal"


@pytest.mark.parametrize(
    ("name", "secret"),
    [("password", True), ("sas_token", True), ("aws_access_key_id", True),
     ("account_key", True), ("Authorization", True), ("tlsCertificateKeyFile", False),
     ("authSource", False), ("endpoint_url", False), ("admin_port", False)],
)  # fmt: skip
def test_secret_names(name: str, secret: bool):
    assert is_secret_name(name) is secret


def test_store_options_are_resolved_where_the_store_is_opened(monkeypatch):
    monkeypatch.setenv("BACKSTOP_TEST_STORE_KEY", "resolved-key-value")
    spec = StoreSpec(url="memory://secrets-test", options={"key": "${env:BACKSTOP_TEST_STORE_KEY}"})
    assert spec.open().fs.storage_options["key"] == "resolved-key-value"
    assert "resolved-key-value" not in spec.model_dump_json()  # what a flow run stores


def test_hide_secrets_covers_every_url_and_the_store():
    request = RestoreRequest(
        technology="schemaless",
        store=StoreSpec(url="s3://u:pw1@bucket/x", options={"secret": "pw2"}),
        targets=["postgresql+psycopg://u:pw3@h/db"],
        sources=["postgresql+psycopg://u@h/db?password=pw4"],
    )
    assert len(literal_secrets_in(request)) == 4
    hidden = hide_secrets(request)
    assert literal_secrets_in(hidden) == []
    assert not any(pw in hidden.model_dump_json() for pw in ("pw1", "pw2", "pw3", "pw4"))


def test_driver_options_get_the_same_secret_rules():
    # A password in an option's URL (ZooKeeper's admin_url) is stored with the run's
    # parameters and the manifest's options unless it travels as a reference.
    request = BackupRequest(
        technology="zookeeper",
        sources=["zk://h:2181"],
        store=StoreSpec(url="file:///tmp/s"),
        options={"mode": "admin-snapshot", "admin_url": "http://admin:pw5@h:8080"},
    )
    assert literal_secrets_in(request) == ["option admin_url"]
    hidden = hide_secrets(request)
    assert literal_secrets_in(hidden) == []
    assert "pw5" not in hidden.model_dump_json()
    assert resolve_placeholders(hidden.options["admin_url"]) == "http://admin:pw5@h:8080"


@pytest.mark.parametrize(
    ("technology", "operation", "options", "unknown", "known"),
    [
        ("schemaless", "backup", {"tables": "cells", "password": "SEKRET"}, "password", "tables"),
        ("schemaless", "backup", {"table": "cells"}, "table", "tables"),
        ("schemaless", "restore", {"tables": "cells"}, "tables", "ignore_extra_columns"),
        ("zookeeper", "backup", {"auth": "digest:admin:SEKRET"}, "auth", "admin_url"),
        ("zookeeper", "restore", {"mode": "datadir"}, "mode", "include_system"),
        ("docstore", "backup", {"namespace": "db.c"}, "namespace", "namespaces"),
        ("docstore", "restore", {"quiesce": "fsynclock"}, "quiesce", "include_system"),
    ],
)
def test_an_option_the_driver_does_not_read_is_refused(
    technology: str, operation: str, options: dict, unknown: str, known: str
):
    with pytest.raises(BadInputError) as refused:
        get_driver(technology).check_options(options, operation)
    message = str(refused.value)
    assert f"option(s) {unknown};" in message and f"{known} (" in message
    assert "SEKRET" not in message


@pytest.mark.parametrize(
    "argv",
    [
        ["backup", "schemaless", "--source", "sqlite:///a.db", "--option", "tables=cells",
         "--option", "password=SEKRET"],
        ["backup", "schemaless", "--source", "sqlite:///a.db", "--option", "table=cells"],
        ["backup", "zookeeper", "--source", "zk://127.0.0.1:1", "--option",
         "auth=digest:admin:SEKRET"],
        ["restore", "docstore", "--target", "mongodb://127.0.0.1:1/", "--option", "bogus=1"],
        ["drill", "zookeeper", "--source", "zk://127.0.0.1:1/a", "--scratch",
         "zk://127.0.0.1:1/b", "--option", "auth=digest:admin:SEKRET"],
        ["backup", "schemaless", "--source", "postgresql://u:p@ss@127.0.0.1:1/db"],
    ],
)  # fmt: skip
def test_cli_refuses_unknown_options_and_raw_userinfo_before_prefect_starts(
    argv: list[str], tmp_path, capsys, monkeypatch
):
    from backstop.flows import cli

    monkeypatch.chdir(tmp_path)
    # Exit 2 from the input check: no flow is imported, let alone run (which would
    # store the options as parameters).
    monkeypatch.setattr(cli, "COMMANDS", {})
    code = cli.main([*argv, "--store", str(tmp_path / "store"), "--json"])
    out = capsys.readouterr()
    assert code == 2
    error = json.loads(out.out)["error"]
    assert "SEKRET" not in out.out + out.err and "ss@" not in error
    assert "known:" in error or "percent-encode" in error


# -- against the session's Prefect server -------------------------------------------------
def stored_by_prefect(since: datetime) -> list[str]:
    """Everything Prefect keeps about the flow runs created since `since`: the runs
    (parameters, names, every state with its message), their task runs and states,
    logs, artifacts and events, as JSON texts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.events.filters import EventFilter, EventOccurredFilter
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    texts: list[str] = []
    with get_client(sync_client=True) as client:
        # Newest first: the store of a whole test session holds far more than one page,
        # and the default order (by id) is no order in time.
        recent = client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=200)
        runs = [r for r in recent if r.created and r.created >= since]
        assert runs, "no flow run was recorded"
        ids = FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs]))
        for run in runs:
            texts.append(run.model_dump_json())
            texts += [s.model_dump_json() for s in client.read_flow_run_states(run.id)]
        for task_run in paged(
            lambda offset: client.read_task_runs(flow_run_filter=ids, limit=200, offset=offset)
        ):
            texts.append(task_run.model_dump_json())
            texts += [s.model_dump_json() for s in client.read_task_run_states(task_run.id)]
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs]))
        logs = paged(lambda offset: client.read_logs(log_filter, limit=200, offset=offset))
        texts += [log.model_dump_json() for log in logs]
        texts += [a.model_dump_json() for a in client.read_artifacts(flow_run_filter=ids)]
        page = client.read_events(
            EventFilter(occurred=EventOccurredFilter(since=since, until=datetime.now(UTC))),
            limit=50,
        )
        texts += [e.model_dump_json() for e in page.events]
        while page.next_page:
            page = client.read_events_page(str(page.next_page))
            texts += [e.model_dump_json() for e in page.events]
    return texts


def paged(read: Callable[[int], list[Any]]) -> list[Any]:
    """Every item of a Prefect read that returns at most 200 at a time."""
    items: list[Any] = []
    while batch := read(len(items)):
        items += batch
        if len(batch) < 200:
            break
    return items


def leaks(secrets: list[str], texts: list[str]) -> list[str]:
    return [f"{s!r} in {t[:300]}" for s in secrets for t in texts if s in t]


@pytest.mark.integration
def test_cli_secrets_in_urls_and_store_options_never_reach_prefect(
    cli, new_databases, moto_endpoint, tmp_path
):
    """A PostgreSQL shard reached with its real password as ?password= (backup, drill)
    and as user:password@ (restore, the drill's scratch), an S3 store with
    --store-option key=/secret=: backed up, restored, verified, drilled and its metrics
    printed; no secret anywhere in what Prefect stored, the store (manifests, the drill
    record) or the output (the metrics' labels)."""
    import s3fs
    from servers.sql import PASSWORD
    from test_schemaless_sql import cells_of, fill

    [source, target, scratch] = new_databases("postgresql", 3)
    fill(source, 300)
    user_and_host, database = source.rsplit("/", 1)
    by_query = f"{user_and_host.replace(':' + PASSWORD + '@', '@')}/{database}?password={PASSWORD}"
    assert PASSWORD not in by_query.split("?")[0]
    bucket = f"backstop-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=moto_endpoint, skip_instance_cache=True).mkdir(bucket)
    key, secret = f"AKIA{uuid.uuid4().hex[:16].upper()}", f"s3-{uuid.uuid4().hex}"
    store = ["--store", f"s3://{bucket}/backups", "--store-option", f"endpoint_url={moto_endpoint}",
             "--store-option", f"key={key}", "--store-option", f"secret={secret}"]  # fmt: skip
    since = datetime.now(UTC)

    backed = cli("-v", "backup", "schemaless", "--source", by_query, *store, "--json")
    assert backed.code == 0, backed.stdout + backed.stderr
    restored = cli("-v", "restore", "schemaless", "--target", target, *store, "--json")
    assert restored.code == 0, restored.stdout + restored.stderr
    checked = cli("verify", *store, "--json")
    assert checked.code == 0, checked.stdout + checked.stderr
    assert cells_of(target) == cells_of(source)
    drilled = cli("drill", "schemaless", "--source", by_query, "--scratch", scratch, *store,
                  "--json")  # fmt: skip
    assert drilled.code == 0, drilled.stdout + drilled.stderr
    measured = cli("metrics", *store)
    assert measured.code == 0, measured.stdout + measured.stderr
    assert "backstop_drill_last_success_timestamp_seconds{" in measured.stdout

    outputs = [r.stdout + r.stderr for r in (backed, restored, checked, drilled, measured)]
    fs = s3fs.S3FileSystem(endpoint_url=moto_endpoint, key=key, secret=secret)
    manifests = [fs.cat_file(p).decode() for p in fs.glob(f"{bucket}/backups/*/*/*.json")]
    assert any('"passed_at"' in m for m in manifests)  # the drill's record is searched too
    stored = stored_by_prefect(since)
    assert not leaks([PASSWORD, key, secret], stored + outputs + manifests)
    assert any("${env:BACKSTOP_SECRET_" in t for t in stored)  # references travelled instead


@pytest.mark.integration
def test_a_flow_called_directly_refuses_a_plain_text_password(new_databases, local_store):
    """As a deployment or the UI would start it: refused before anything runs, with the
    way to do it instead; the stored parameters no longer hold the password."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort
    from servers.sql import PASSWORD

    from backstop.flows.backup import backup

    [source] = new_databases("postgresql", 1)
    since = datetime.now(UTC)
    with pytest.raises(BadInputError, match=r"\$\{secret:") as refused:
        backup(request=BackupRequest(technology="schemaless", sources=[source], store=local_store))
    assert "user:password@" in str(refused.value) and PASSWORD not in str(refused.value)
    assert local_store.open().folders() == []
    with get_client(sync_client=True) as client:
        recent = client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=50)
        [run] = [r for r in recent if r.created >= since]
    assert PASSWORD not in json.dumps(run.parameters)
    assert "backstop:***@" in json.dumps(run.parameters)


@pytest.mark.integration
def test_a_flow_called_directly_refuses_a_plain_text_store_credential(shards, moto_endpoint):
    from backstop.flows.backup import backup

    store = StoreSpec(
        url="s3://any-bucket/x", options={"endpoint_url": moto_endpoint, "secret": "plain-text"}
    )
    with pytest.raises(BadInputError, match=r"store option secret.*\$\{secret:"):
        backup(request=BackupRequest(technology="schemaless", sources=shards, store=store))


@pytest.mark.integration
def test_docstore_backup_and_restore_with_the_host_in_a_reference(
    cli, ferret_source, ferret_target, local_store, monkeypatch
):
    """Every driver method gets resolved URLs: with the whole host part of the Docstore
    URLs in ${env:} references, planning the backup (which lists the databases) works."""
    from pymongo import MongoClient

    db = f"refs_{uuid.uuid4().hex[:8]}"
    with MongoClient(ferret_source.url) as client:
        client[db].docs.insert_many([{"_id": i, "v": str(i)} for i in range(50)])
    monkeypatch.setenv("BACKSTOP_TEST_DOC_SOURCE", ferret_source.url.removeprefix("mongodb://"))
    monkeypatch.setenv("BACKSTOP_TEST_DOC_TARGET", ferret_target.url.removeprefix("mongodb://"))
    source, target = "mongodb://${env:BACKSTOP_TEST_DOC_SOURCE}", "mongodb://${env:BACKSTOP_TEST_DOC_TARGET}"  # fmt: skip

    backed = cli("backup", "docstore", "--source", source, "--store", local_store.url,
                 "--include", f"{db}.*", "--json")  # fmt: skip
    assert backed.code == 0, backed.stdout + backed.stderr
    assert backed.json["records"] == 50
    restored = cli("restore", "docstore", "--target", target, "--store", local_store.url, "--json")
    assert restored.code == 0, restored.stdout + restored.stderr
    with MongoClient(ferret_target.url) as client:
        assert sorted(d["_id"] for d in client[db].docs.find()) == list(range(50))
