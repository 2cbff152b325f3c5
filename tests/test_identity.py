"""Backup identity: what `latest` means (never a safety or drill backup, never another
source's), and places compared by identity, not spelling (a drill never writes into
its source, a restore never has two targets that are one place)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backstop.drivers.errors import BadInputError
from backstop.drivers.identity import check_apart, check_distinct, same_place
from backstop.drivers.registry import get_driver
from backstop.flows.backup import backup
from backstop.flows.demo import compare_shards, make_schemaless_datastore
from backstop.flows.params import BackupRequest
from backstop.tasks.manifest import Role

pytestmark = pytest.mark.integration


def _args(flag: str, urls: list[str]) -> list[str]:
    return [a for url in urls for a in (flag, url)]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _old_content(folder: Path) -> list[str]:
    """Two SQLite shards holding other cells than the `shards` fixture's."""
    return make_schemaless_datastore(folder, shards=2, cells=900, seed=99)


# -- latest -----------------------------------------------------------------------------
def test_the_same_overwrite_restore_twice_leaves_the_target_equal_to_the_backup(
    cli, shards, local_store, tmp_path
):
    targets = _old_content(tmp_path / "target")
    backed = cli("backup", "schemaless", *_args("--source", shards), "--store", local_store.url,
                 "--json")  # fmt: skip
    assert backed.code == 0, backed.stderr
    restore = ("restore", "schemaless", "--store", local_store.url, *_args("--target", targets),
               "--mode", "overwrite", "--json")  # fmt: skip

    first = cli(*restore)
    assert first.code == 0, first.stderr
    assert first.json["safety_backup"]  # the targets' old cells, kept before the overwrite
    second = cli(*restore)  # the same command again: latest must still be the backup
    assert second.code == 0, second.stderr
    assert second.json["backup_id"] == backed.json["backup_id"]
    comparison = compare_shards(shards, targets)
    assert comparison.equal and comparison.cells == 6_000, comparison.differences

    listed = cli("list", "--store", local_store.url, "--json").json["backups"]
    roles = {b["backup_id"]: b["role"] for b in listed}
    assert roles[backed.json["backup_id"]] == "adhoc"
    assert roles[first.json["safety_backup"]] == "safety"
    assert "safety" in cli("list", "--store", local_store.url).stdout


def test_after_an_overwrite_killed_past_its_safety_backup_a_rerun_restores_the_backup(
    cli, shards, local_store, tmp_path
):
    targets = _old_content(tmp_path / "target")
    backed = cli("backup", "schemaless", *_args("--source", shards), "--store", local_store.url,
                 "--json")  # fmt: skip
    assert backed.code == 0, backed.stderr
    # What a kill right after the safety backup leaves: the targets' safety backup is the
    # newest complete backup in the store, and the targets still hold their old cells.
    safety = backup(
        request=BackupRequest(
            technology="schemaless", sources=targets, store=local_store, role=Role.SAFETY
        )
    )
    assert local_store.open().read_manifest("schemaless", safety.backup_id).role is Role.SAFETY

    rerun = cli("restore", "schemaless", "--store", local_store.url, *_args("--target", targets),
                "--mode", "overwrite", "--json")  # fmt: skip
    assert rerun.code == 0, rerun.stderr
    assert rerun.json["backup_id"] == backed.json["backup_id"]
    assert compare_shards(shards, targets).equal


def test_latest_in_a_store_of_two_sources_is_refused_listing_both(
    cli, shards, local_store, tmp_path
):
    other = _old_content(tmp_path / "other")
    first = cli("backup", "schemaless", *_args("--source", shards), "--store", local_store.url,
                "--json")  # fmt: skip
    second = cli("backup", "schemaless", *_args("--source", other), "--store", local_store.url,
                 "--json")  # fmt: skip
    assert first.code == 0 and second.code == 0
    targets = [f"sqlite:///{tmp_path / f'new{i}.db'}" for i in range(2)]

    refused = cli("restore", "schemaless", "--store", local_store.url,
                  *_args("--target", targets), "--json")  # fmt: skip
    assert refused.code == 2
    error = refused.json["error"]
    assert "2 different sources" in error and "--source" in error
    assert f"{shards[0]}, {shards[1]} -> {first.json['backup_id']}" in error
    assert f"{other[0]}, {other[1]} -> {second.json['backup_id']}" in error
    assert not any(Path(t.removeprefix("sqlite:///")).exists() for t in targets)

    verify = cli("verify", "--store", local_store.url, "--technology", "schemaless",
                 "--backup", "latest", "--json")  # fmt: skip
    assert verify.code == 2 and "different sources" in verify.json["error"]

    # --source picks the older source's newest backup, by its URL or another spelling.
    dotted = [url.replace("/source/", "/source/./") for url in shards]
    chosen = cli("restore", "schemaless", "--store", local_store.url, *_args("--source", dotted),
                 *_args("--target", targets), "--json")  # fmt: skip
    assert chosen.code == 0, chosen.stderr
    assert chosen.json["backup_id"] == first.json["backup_id"]
    assert compare_shards(shards, targets).equal
    checked = cli("verify", "--store", local_store.url, "--technology", "schemaless",
                  *_args("--source", other), "--json")  # fmt: skip
    assert checked.code == 0 and checked.json["backups"] == [
        f"schemaless/{second.json['backup_id']}"
    ]


def test_incrementals_never_build_on_a_safety_backup(cli, shards, local_store, tmp_path):
    full = cli("backup", "schemaless", *_args("--source", shards), "--store", local_store.url,
               "--json")  # fmt: skip
    assert full.code == 0, full.stderr
    # A safety backup of the same shards (restoring a datastore in place takes one).
    backup(
        request=BackupRequest(
            technology="schemaless", sources=shards, store=local_store, role=Role.SAFETY
        )
    )
    incremental = cli("backup", "schemaless", *_args("--source", shards), "--store",
                      local_store.url, "--incremental", "--json")  # fmt: skip
    assert incremental.code == 0, incremental.stderr
    assert incremental.json["parent"] == full.json["backup_id"]


def test_status_shows_the_role(cli, shards, local_store):
    assert cli("backup", "schemaless", *_args("--source", shards), "--store",
               local_store.url).code == 0  # fmt: skip
    status = cli("status", "--store", local_store.url, "--json")
    assert status.json["sources"][0]["role"] == "adhoc"
    assert "adhoc" in cli("status", "--store", local_store.url).stdout


# -- places, not spellings ---------------------------------------------------------------
def _sqlite_aliases(path: Path) -> list[str]:
    """Three other spellings of a SQLite file: ./ in its path, a symlink, a hard link."""
    symlink = path.parent / "symlink.db"
    symlink.symlink_to(path)
    hardlink = path.parent / "hardlink.db"
    os.link(path, hardlink)
    return [f"sqlite:///{path.parent}/./{path.name}", f"sqlite:///{symlink}",
            f"sqlite:///{hardlink}"]  # fmt: skip


def test_a_drill_into_its_own_sqlite_source_under_another_spelling_is_refused(
    cli, shards, local_store
):
    path = Path(shards[0].removeprefix("sqlite:///"))
    before = _file_digest(path)
    for alias in _sqlite_aliases(path):
        result = cli("drill", "schemaless", "--source", shards[0], "--scratch", alias,
                     "--store", local_store.url, "--json")  # fmt: skip
        assert result.code == 2, (alias, result.stdout)
        assert "also a --source" in result.json["error"]
        assert _file_digest(path) == before
    assert local_store.open().folders() == []  # refused before anything was backed up


def test_a_restore_whose_two_targets_are_one_file_is_refused(cli, shards, local_store, tmp_path):
    assert cli("backup", "schemaless", *_args("--source", shards), "--store",
               local_store.url).code == 0  # fmt: skip
    target = tmp_path / "t.db"
    shutil.copyfile(Path(shards[0].removeprefix("sqlite:///")), target)
    before = _file_digest(target)
    link = tmp_path / "link.db"
    link.symlink_to(target)
    result = cli("restore", "schemaless", "--store", local_store.url, "--target",
                 f"sqlite:///{target}", "--target", f"sqlite:///{link}", "--mode", "overwrite",
                 "--json")  # fmt: skip
    assert result.code == 2 and "same place" in result.json["error"]
    assert _file_digest(target) == before


def test_a_drill_into_its_postgresql_source_by_another_host_name_is_refused(
    cli, pg_server, local_store
):
    import psycopg
    from servers.sql import PASSWORD

    database = pg_server.create_database()
    source = pg_server.url(database)
    plain = source.replace("+psycopg", "")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('untouched')")
    scratch = source.replace("@127.0.0.1:", "@localhost:")
    result = cli("drill", "schemaless", "--source", source, "--scratch", scratch,
                 "--store", local_store.url, "--json")  # fmt: skip
    assert result.code == 2 and "also a --source" in result.json["error"]
    assert PASSWORD not in result.stdout
    with psycopg.connect(plain) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("untouched",)]
    assert local_store.open().folders() == []

    # Another database of the same server is another place.
    driver = get_driver("schemaless")
    other = pg_server.url(pg_server.create_database()).replace("@127.0.0.1:", "@localhost:")
    assert not same_place(driver.identity(source), driver.identity(other))


def test_a_postgresql_role_without_pg_control_system_still_sees_one_server_by_any_address(
    pg_server,
):
    """The fallback identity is what the server says of itself, not how it was reached:
    the same through 127.0.0.1, a forwarder on another port and the Unix socket."""
    import psycopg
    from servers.proxy import Forwarder
    from servers.sql import PASSWORD

    database = pg_server.create_database()
    admin = pg_server.url(database).replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE ROLE plain LOGIN PASSWORD 'plain-pw' NOSUPERUSER")
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    try:
        forwarder = Forwarder(pg_server.port)
        direct = pg_server.url(database).replace(f"backstop:{PASSWORD}@", "plain:plain-pw@")
        forwarded = direct.replace(f":{pg_server.port}/", f":{forwarder.port}/")
        socket = (f"postgresql+psycopg://plain:plain-pw@/{database}"
                  f"?host={pg_server.folder}&port={pg_server.port}")  # fmt: skip
        driver = get_driver("schemaless")
        ids = [driver.identity(url) for url in (direct, forwarded, socket)]
        assert "system-" not in ids[0]  # the fallback was taken
        assert all(same_place(ids[0], other) for other in ids[1:]), ids
        forwarder.close()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC")


def test_a_drill_into_its_zookeeper_source_by_another_spelling_is_refused(
    cli, zk_server, zk_client, zk_root, local_store
):
    zk_client.create(f"{zk_root}/x/config", b"v1", makepath=True)
    source = f"zk://127.0.0.1:{zk_server.port}{zk_root}/x"
    for scratch in (
        f"zk://localhost:{zk_server.port}{zk_root}/x/",  # another host name, a trailing /
        f"zk://localhost:{zk_server.port}{zk_root}/x/sub",  # inside the source
        f"zk://127.0.0.1:{zk_server.port}{zk_root}",  # holding the source
    ):
        result = cli("drill", "zookeeper", "--source", source, "--scratch", scratch,
                     "--store", local_store.url, "--json")  # fmt: skip
        assert result.code == 2, (scratch, result.stdout)
        assert "also a --source" in result.json["error"]
    assert zk_client.get(f"{zk_root}/x/config")[0] == b"v1"
    assert zk_client.get_children(f"{zk_root}/x") == ["config"]
    assert local_store.open().folders() == []


def test_identities_hold_no_password_and_default_to_the_normalized_url():
    driver = get_driver("schemaless")
    assert driver.identity("sqlite:////tmp/./x/../a.db") == "sqlite:///tmp/a.db"
    # The contract's default, for a driver that does not say better.
    default = super(type(driver), driver).identity("HTTP://u:hunter2@Example.COM:81/a/?k=v")
    assert default == "http://example.com:81/a" and "hunter2" not in default
    assert same_place("zookeeper://e/a", "zookeeper://e/a/b")
    assert not same_place("zookeeper://e/a", "zookeeper://e/ab")


def test_prune_never_counts_a_safety_backup_among_a_sources_newest(cli, shards, local_store):
    """Restoring a datastore in place takes safety backups of its own sources: keeping the
    newest backup of those sources must still keep an ordinary one, or latest is gone."""
    ordinary = cli("backup", "schemaless", *_args("--source", shards), "--store",
                   local_store.url, "--json")  # fmt: skip
    assert ordinary.code == 0, ordinary.stderr
    backup(
        request=BackupRequest(
            technology="schemaless", sources=shards, store=local_store, role=Role.SAFETY
        )
    )
    pruned = cli("prune", "--store", local_store.url, "--keep-last", "1", "--json")
    assert pruned.code == 0, pruned.stdout
    assert ordinary.json["backup_id"] not in [d["backup_id"] for d in pruned.json["deleted"]]
    assert local_store.open().resolve("schemaless").backup_id == ordinary.json["backup_id"]
    rows = cli("status", "--store", local_store.url, "--json").json["sources"]
    assert sorted(r["role"] for r in rows) == ["adhoc", "safety"]


_IDENTITIES = st.one_of(
    st.builds(
        lambda kind, parts, slash: f"{kind}://" + "/".join(parts) + ("/" if slash else ""),
        st.sampled_from(["sqlite", "zookeeper"]),
        st.lists(st.sampled_from(["a", "b", "a-b", "ab", ""]), max_size=3),
        st.booleans(),
    ),
    st.text(alphabet="ab/-:", max_size=6),  # and what no driver makes: "", "/", "a//"
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_IDENTITIES, max_size=6), st.lists(_IDENTITIES, min_size=1, max_size=6))
def test_the_place_checks_refuse_exactly_what_a_comparison_of_every_pair_refuses(written, read):
    """check_distinct and check_apart look places up (not pair by pair, which took 8
    million comparisons at 4,096 shards); they must refuse exactly the same lists."""
    urls = [f"url{i}" for i in range(len(written))]
    read_urls = [f"read{j}" for j in range(len(read))]
    pairwise_apart = any(same_place(w, r) for w in written for r in read)
    pairwise_distinct = any(
        same_place(a, b) for i, a in enumerate(written) for b in written[i + 1 :]
    )
    try:
        check_apart(written, urls, read, read_urls, "scratch", "source")
    except BadInputError as exc:
        assert pairwise_apart, exc
    else:
        assert not pairwise_apart
    try:
        check_distinct(written, urls, "target")
    except BadInputError as exc:
        assert pairwise_distinct, exc
    else:
        assert not pairwise_distinct
