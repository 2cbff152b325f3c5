"""The Docstore driver: MongoDB-protocol servers, documents as raw BSON end to end."""

from __future__ import annotations

import contextlib
import json
import os
from collections import deque
from collections.abc import Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

from bson import Timestamp, json_util
from bson.raw_bson import RawBSONDocument
from pymongo import errors as pm
from pymongo.uri_parser import parse_uri

from backstop.drivers.contract import (
    Capabilities,
    Consistency,
    ConsistencyKind,
    Driver,
    FileSink,
    FileSource,
    QualityChunk,
    QualityPart,
    RestoreMode,
    RestorePlan,
    RestoreResult,
    StoredFile,
    StoredUnit,
    TargetCheck,
    Unit,
    UnitResult,
    run_to_end,
)
from backstop.drivers.digests import ALGORITHM, SetDigest, algorithm_problem
from backstop.drivers.docstore.bsonfile import (
    FORMAT,
    METADATA_FORMAT,
    document_hash,
    id_key,
    read_documents,
    read_metadata,
)
from backstop.drivers.docstore.client import classify, connect, deployment_identity, explain
from backstop.drivers.docstore.names import (
    SYSTEM_DATABASES,
    Renames,
    check_patterns,
    selected,
)
from backstop.drivers.docstore.quality import SUITE
from backstop.drivers.errors import BadInputError, ErrorKind, PermanentError
from backstop.drivers.redact import redact_url

WRITE_CHUNK = 1 << 20
READ_BATCH = 1000
QUALITY_CHUNK = 100_000  # documents per quality chunk
INSERT_WORKERS = int(os.environ.get("BACKSTOP_DOCSTORE_INSERT_WORKERS", "4"))
_PROBE_DB = "backstop_probe"  # never created: a snapshot find on it only tests support
_SNAPSHOT_TOO_OLD = 239
INSERT_BATCH_BYTES = 8 << 20
INSERT_BATCH_DOCS = 1000
_JSON = json_util.JSONOptions(json_mode=json_util.JSONMode.CANONICAL)


def _file_part(name: str) -> str:
    """A database or collection name as a safe file name part."""
    return quote(name, safe="-_.@+=,")


class DocstoreDriver(Driver):
    name = "docstore"
    version = "1.0.0"
    capabilities = Capabilities(
        consistency=(ConsistencyKind.SNAPSHOT, ConsistencyKind.QUIESCED, ConsistencyKind.NONE),
        selective_restore=True,
        rename=True,
    )
    url_schemes = ("mongodb",)
    quality_suite = SUITE
    backup_options = {
        "include": "namespace patterns to back up (db.collection, * wildcards)",
        "exclude": "namespace patterns to leave out",
        "include_system": "true: back up the admin/config/local databases too",
        "namespaces": "exact db.collection names to back up (what a safety backup takes)",
        "quiesce": "none (default) or fsynclock: lock a standalone server's writes",
    }
    restore_options = {
        "include_system": "true: allow restoring the admin/config/local databases",
    }
    single_url = "a deployment is one URL"

    def classify(self, exc: BaseException) -> ErrorKind:
        return classify(exc)

    def check_urls(self, urls: Sequence[str], role: str) -> None:
        super().check_urls(urls, role)
        try:
            parse_uri(urls[0])
        except (pm.InvalidURI, pm.ConfigurationError, ValueError) as exc:
            raise BadInputError(f"{role} {redact_url(urls[0])!r}: {exc}") from None

    def identity(self, url: str) -> str:
        """The deployment, whatever the URL's spelling: a replica set by its name and
        members as the set itself reports them; a standalone server by its resolved
        address. The URL's database is only where to authenticate: a restore writes
        the backup's own namespaces, so the place is the whole deployment."""
        return f"mongodb://{deployment_identity(url)}"

    # -- backup ---------------------------------------------------------------------
    def plan_backup(self, sources: Sequence[str], options: Mapping[str, Any]) -> list[Unit]:
        include = check_patterns(_list(options.get("include")))
        exclude = check_patterns(_list(options.get("exclude")))
        with_system = str(options.get("include_system", "")).lower() in ("1", "true", "yes")
        _quiesce_option(options)  # refused before connecting
        # Exact namespaces (a safety backup's: names are not patterns, a space or a * in
        # a collection name is just a character).
        exact = set(_list(options.get("namespaces")))
        units = []
        with connect(sources[0]) as client:
            for db in sorted(client.list_database_names()):
                if db in SYSTEM_DATABASES and not with_system:
                    continue
                for info in client[db].list_collections():
                    info = (
                        info if isinstance(info, dict) else json_util.loads(json_util.dumps(info))
                    )
                    coll = info["name"]
                    if info.get("type", "collection") != "collection" or coll.startswith("system."):
                        continue
                    namespace = f"{db}.{coll}"
                    if namespace in exact if exact else selected(namespace, include, exclude):
                        units.append(
                            Unit(
                                name=namespace,
                                source=sources[0],
                                options={"db": db, "collection": coll},
                            )
                        )
        return units

    def quiesce(
        self, sources: Sequence[str], options: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Fix the point every collection is read at: on a replica set, one cluster time
        for snapshot reads; on a standalone, fsyncLock held until `release` only when
        asked for (--option quiesce=fsynclock: it blocks every write of every client for
        the whole backup). Otherwise record why the copy is fuzzy."""
        wanted = _quiesce_option(options or {})
        with connect(sources[0]) as client:
            hello = client.admin.command("hello")
            if hello.get("setName"):
                return _snapshot_point(client, hello)
            if wanted == "none":
                return {
                    "kind": "none",
                    "reason": (
                        "a standalone server, not quiesced: fsyncLock would block every write "
                        "for the whole backup, so it is only taken with --option "
                        "quiesce=fsynclock; documents written during the backup may or may "
                        "not be in it"
                    ),
                }
            try:
                client.admin.command("fsyncLock")
            except pm.OperationFailure as exc:
                return {
                    "kind": "none",
                    "reason": (
                        f"the server cannot block writes (fsyncLock: {exc.details.get('errmsg', exc)}"
                        "), and it is no replica set: documents written during the backup may or "
                        "may not be in it"
                    ),
                }
            return {"kind": "quiesced"}

    def release(self, handle: dict[str, Any] | None, sources: Sequence[str]) -> None:
        if handle and handle.get("kind") == "quiesced":
            with connect(sources[0]) as client:
                client.admin.command("fsyncUnlock")

    def backup_unit(self, unit: Unit, sink: FileSink) -> UnitResult:
        db, name = unit.options["db"], unit.options["collection"]
        base = f"{_file_part(db)}/{_file_part(name)}"
        digest = SetDigest()
        with connect(unit.source) as client:
            collection = client[db][name]
            infos = list(client[db].list_collections(filter={"name": name}))
            info = json_util.loads(json_util.dumps(infos[0])) if infos else {}
            indexes = [json_util.loads(json_util.dumps(i)) for i in collection.list_indexes()]
            with sink.open(
                f"{base}.bson", format=FORMAT, meta={"db": db, "collection": name}
            ) as out:
                parts: list[bytes] = []
                size = count = 0
                ids = _ObservedIds(sink, unit.name)
                for document in _documents(client[db], name, unit.options.get("quiesce")):
                    raw = document.raw
                    digest.add(document_hash(raw))
                    parts.append(raw)
                    ids.add(raw)
                    size += len(raw)
                    count += 1
                    if size >= WRITE_CHUNK:
                        out.write(b"".join(parts), count)
                        parts, size, count = [], 0, 0
                if parts:
                    out.write(b"".join(parts), count)
                ids.flush()
            metadata = {
                "options": info.get("options", {}),
                "indexes": indexes,
                "uuid": _uuid_hex(info),
                "collectionName": name,
                "type": "collection",
            }
            with sink.open(f"{base}.metadata.json", format=METADATA_FORMAT) as out:
                out.write(json_util.dumps(metadata, json_options=_JSON).encode(), 0)
        return UnitResult(
            records=digest.count,
            meta={
                "db": db,
                "collection": name,
                "digest": digest.hex,
                "digest_algorithm": ALGORITHM,
                "indexes": _index_specs(indexes),
            },
        )

    def consistency(
        self, quiesce_handle: dict[str, Any] | None, units: Sequence[StoredUnit]
    ) -> Consistency:
        handle = quiesce_handle or {"kind": "none", "reason": "not quiesced"}
        if handle["kind"] == "snapshot":
            return Consistency(
                kind=ConsistencyKind.SNAPSHOT,
                point={"atClusterTime": handle["cluster_time"], "replica_set": handle["set"]},
            )
        if handle["kind"] == "quiesced":
            return Consistency(kind=ConsistencyKind.QUIESCED, point={"fsyncLock": True})
        return Consistency(kind=ConsistencyKind.NONE, point={}, warnings=[handle["reason"]])

    # -- restore --------------------------------------------------------------------
    def prepare_restore(
        self, units: Sequence[StoredUnit], targets: Sequence[str], plan: RestorePlan
    ) -> None:
        self.check_urls(targets, "target")
        include = check_patterns(list(plan.include))
        renames = Renames(list(plan.rename))
        chosen = list(_chosen(units, include))
        renames.check_distinct([u.name for u in chosen])
        _refuse_system([_target(u, plan) for u in chosen], plan)
        if plan.mode is not RestoreMode.FAIL_IF_EXISTS:
            return None
        held = []
        with connect(targets[0]) as client:
            for unit in chosen:
                db, name = _target(unit, plan)
                if client[db][name].estimated_document_count():
                    held.append(f"{db}.{name}")
        if held:
            raise BadInputError(
                f"target {redact_url(targets[0])} already holds documents in "
                f"{', '.join(held[:5])}{' ...' if len(held) > 5 else ''}; restore refuses to "
                "write into a non-empty target and left it untouched; choose --mode overwrite "
                "or --mode merge"
            )
        return None

    def restore_unit(
        self, unit: StoredUnit, target: str, source: FileSource, plan: RestorePlan
    ) -> RestoreResult:
        if not list(_chosen([unit], list(plan.include))):
            return RestoreResult(records_written=0, records_skipped=0)
        data, metadata_file = _files(unit)
        db, name = _target(unit, plan)
        with source.open(metadata_file) as stream:
            metadata = read_metadata(stream)
        written = skipped = 0
        with connect(target) as client:
            database = client[db]
            if plan.mode is RestoreMode.OVERWRITE:
                # Every attempt (a retry too) starts from the collection dropped.
                database.drop_collection(name)
            existed = name in database.list_collection_names(filter={"name": name})
            if not existed:
                options = {k: v for k, v in metadata.get("options", {}).items()}
                with contextlib.suppress(pm.CollectionInvalid):
                    database.create_collection(name, **options)
            collection = database[name]
            with source.open(data) as stream:
                written, skipped = _insert_all(
                    collection, _batches(read_documents(stream)), plan.mode, f"{db}.{name}"
                )
            # Merge adds the indexes the target lacks and leaves its own as they are.
            held = (
                {i["name"] for i in collection.list_indexes()}
                if plan.mode is RestoreMode.MERGE and existed
                else set()
            )
            for index in metadata.get("indexes", []):
                if index.get("name") == "_id_" or index.get("name") in held:
                    continue
                keys = list(index["key"].items())
                extra = {k: v for k, v in index.items() if k not in ("key", "v", "ns")}
                collection.create_index(keys, **extra)
        return RestoreResult(records_written=written, records_skipped=skipped)

    def verify_unit(
        self, unit: StoredUnit, target: str, source: FileSource, plan: RestorePlan
    ) -> TargetCheck:
        return run_to_end(self.verify_with_quality(unit, target, source, plan))

    def verify_with_quality(
        self, unit: StoredUnit, target: str, source: FileSource, plan: RestorePlan
    ) -> Generator[QualityChunk, None, TargetCheck]:
        """One read of the target collection: every document's digest, and its _id for
        the quality suite (the chunks target_quality_chunks would give)."""
        if not list(_chosen([unit], list(plan.include))):
            return TargetCheck(unit=unit.name, ok=True, records=0)
        db, name = _target(unit, plan)
        digest = SetDigest()
        with connect(target) as client:
            collection = client[db][name]
            documents = (d.raw for d in collection.find({}, batch_size=READ_BATCH))
            yield from _id_chunks(f"{db}.{name}", _digested(documents, digest))
            indexes = _index_specs(
                [json_util.loads(json_util.dumps(i)) for i in collection.list_indexes()]
            )
        return _compared(unit, plan, digest, indexes)

    def safety_backup_options(
        self, units: Sequence[StoredUnit], targets: Sequence[str], plan: RestorePlan
    ) -> dict[str, Any] | None:
        # Every collection the overwrite replaces, an empty one too (its options and
        # indexes are replaced as well).
        held = self._existing(targets, [f"{db}.{name}" for db, name in _targets(units, plan)])
        if not held:
            return None
        options: dict[str, Any] = {"namespaces": held}
        if any(h.split(".", 1)[0] in SYSTEM_DATABASES for h in held):
            options["include_system"] = "true"  # the restore was allowed to replace them
        return options

    def restore_parts(
        self, units: Sequence[StoredUnit], source: FileSource, plan: RestorePlan
    ) -> list[str] | None:
        return sorted(f"{db}.{name}" for db, name in _targets(units, plan))

    def absent_parts(self, targets: Sequence[str], parts: Sequence[str]) -> list[str]:
        held = set(self._existing(targets, parts))
        return [p for p in parts if p not in held]

    def drop_parts(self, targets: Sequence[str], parts: Sequence[str]) -> None:
        with connect(targets[0]) as client:
            for part in parts:
                db, _, name = part.partition(".")
                client[db].drop_collection(name)

    @staticmethod
    def _existing(targets: Sequence[str], namespaces: Sequence[str]) -> list[str]:
        """Those of the namespaces that exist in the target (empty or not)."""
        held = []
        with connect(targets[0]) as client:
            for namespace in namespaces:
                db, _, name = namespace.partition(".")
                if name in client[db].list_collection_names(filter={"name": name}):
                    held.append(namespace)
        return held

    # -- data quality ---------------------------------------------------------------
    def quality_parts(self, unit: StoredUnit) -> dict[str, QualityPart]:
        return {unit.name: QualityPart(records=unit.records)}

    def quality_chunks(self, unit: StoredUnit, source: FileSource) -> Iterator[QualityChunk]:
        data, metadata = _files(unit)
        with source.open(metadata) as stream:  # read to its end: its checksums are checked
            while stream.read(1 << 20):
                pass
        with source.open(data) as stream:
            yield from _id_chunks(unit.name, read_documents(stream))

    def target_quality_chunks(
        self, unit: StoredUnit, target: str, plan: RestorePlan
    ) -> Iterator[QualityChunk]:
        if not list(_chosen([unit], list(plan.include))):
            return
        db, name = _target(unit, plan)
        with connect(target) as client:
            cursor = client[db][name].find({}, {"_id": 1}, batch_size=READ_BATCH)
            yield from _id_chunks(f"{db}.{name}", (d.raw for d in cursor))


QUIESCE_CHOICES = ("none", "fsynclock")


def _quiesce_option(options: Mapping[str, Any]) -> str:
    """How a standalone server is quiesced: `none` (the default) or `fsynclock`."""
    wanted = str(options.get("quiesce") or "none").lower()
    if wanted not in QUIESCE_CHOICES:
        raise BadInputError(
            f"--option quiesce={wanted}: choose one of {', '.join(QUIESCE_CHOICES)}"
        )
    return wanted


def _snapshot_point(client, hello) -> dict[str, Any]:
    """One cluster time for every collection's snapshot reads, if the server has them
    (MongoDB 5.0+ replica sets); else why not.

    A snapshot read without a time makes the server pick one and name it in the
    cursor (`atClusterTime`), as pymongo's snapshot sessions rely on; that time is the
    backup's point. A server that ignores the read concern answers without one.
    """
    try:
        reply = client[_PROBE_DB].command(
            {"find": "probe", "limit": 1, "readConcern": {"level": "snapshot"}}
        )
        at = reply["cursor"].get("atClusterTime")
        if at is not None:
            return {"kind": "snapshot", "set": hello["setName"], "cluster_time": [at.time, at.inc]}
        reason = "the server accepted a snapshot read without naming its cluster time"
    except pm.OperationFailure as exc:
        reason = f"snapshot reads failed ({(exc.details or {}).get('errmsg', exc)})"
    return {
        "kind": "none",
        "reason": (
            f"replica set {hello['setName']}, but {reason}: documents written during the "
            "backup may or may not be in it"
        ),
    }


def _snapshot_concern(at: Timestamp) -> dict[str, Any]:
    return {"level": "snapshot", "atClusterTime": at}


class _ObservedIds:
    """The `_id` column of the documents a backup packages, handed to the sink
    QUALITY_CHUNK documents at a time (FileSink.observe), as quality_chunks reads it
    back: the suite runs in the packaging pass, and the validation parses nothing."""

    def __init__(self, sink: FileSink, part: str) -> None:
        self._sink, self._part = sink, part
        self._ids: list[bytes | None] = []

    def add(self, raw: bytes) -> None:
        self._ids.append(id_key(raw))
        if len(self._ids) >= QUALITY_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._ids:
            self._sink.observe(QualityChunk(part=self._part, columns={"_id": self._ids}))
            self._ids = []


def _id_chunks(part: str, raws: Iterator[bytes]) -> Iterator[QualityChunk]:
    ids: list[bytes | None] = []
    for raw in raws:
        ids.append(id_key(raw))
        if len(ids) >= QUALITY_CHUNK:
            yield QualityChunk(part=part, columns={"_id": ids})
            ids = []
    if ids:
        yield QualityChunk(part=part, columns={"_id": ids})


def _digested(raws: Iterator[bytes], digest: SetDigest) -> Iterator[bytes]:
    """The documents, each added to `digest` as it passes."""
    for raw in raws:
        digest.add(document_hash(raw))
        yield raw


def _compared(
    unit: StoredUnit, plan: RestorePlan, digest: SetDigest, indexes: list[dict[str, Any]]
) -> TargetCheck:
    """The target collection's count, digest and indexes against the backup's."""
    problems = []
    if plan.mode is RestoreMode.MERGE:
        if digest.count < unit.records:
            problems.append(
                f"{unit.name}: {digest.count} documents, fewer than the backup's {unit.records}"
            )
    elif digest.count != unit.records:
        problems.append(
            f"{unit.name}: {digest.count} documents in the target, {unit.records} in the backup"
        )
    elif problem := algorithm_problem(unit.meta, "backup"):
        problems.append(f"{unit.name}: {problem}")
    elif digest.hex != unit.meta["digest"]:
        problems.append(f"{unit.name}: the digest of (_id, raw document) differs")
    missing = [i for i in unit.meta.get("indexes", []) if i not in indexes]
    if plan.mode is RestoreMode.MERGE:  # a same-named index of the target's is kept
        names = {i["name"] for i in indexes}
        missing = [i for i in missing if i["name"] not in names]
    if missing:
        problems.append(f"{unit.name}: indexes missing or different: {missing}")
    return TargetCheck(unit=unit.name, ok=not problems, records=digest.count, problems=problems)


def _documents(database, name: str, handle: Mapping[str, Any] | None) -> Iterator[Any]:
    """The collection's documents as raw BSON, at the snapshot's cluster time if the
    quiesce fixed one."""
    if not handle or handle.get("kind") != "snapshot":
        yield from database[name].find({}, batch_size=READ_BATCH)
        return
    at = Timestamp(*handle["cluster_time"])
    try:
        reply = database.command(
            {"find": name, "batchSize": READ_BATCH, "readConcern": _snapshot_concern(at)}
        )
        cursor = reply["cursor"]
        yield from cursor["firstBatch"]
        while cursor["id"]:
            reply = database.command(
                {"getMore": cursor["id"], "collection": name, "batchSize": READ_BATCH}
            )
            cursor = reply["cursor"]
            yield from cursor["nextBatch"]
    except pm.OperationFailure as exc:
        if exc.code == _SNAPSHOT_TOO_OLD:
            raise PermanentError(
                f"{database.name}.{name}: the backup outlasted the server's snapshot history "
                "(minSnapshotHistoryWindowInSeconds, 300 s by default); raise it for the "
                "backup's duration, or back up fewer collections per run"
            ) from None
        raise


def _targets(units: Sequence[StoredUnit], plan: RestorePlan) -> list[tuple[str, str]]:
    """Where the chosen collections of the backup go."""
    return [_target(u, plan) for u in _chosen(units, list(plan.include))]


def _refuse_system(targets: list[tuple[str, str]], plan: RestorePlan) -> None:
    """Nothing is written into admin, local or config, nor into a system.* collection,
    whether the name comes from the backup or from --rename, unless asked for."""
    if str(plan.options.get("include_system", "")).lower() in ("1", "true", "yes"):
        return
    system = [f"{db}.{n}" for db, n in targets if db in SYSTEM_DATABASES or n.startswith("system.")]
    if system:
        raise BadInputError(
            f"the restore would write into system namespaces ({', '.join(sorted(system)[:5])}); "
            "nothing was written. Leave them out with --include or --rename them, or allow "
            "it with --option include_system=true"
        )


def _target(unit: StoredUnit, plan: RestorePlan) -> tuple[str, str]:
    """Where a backed-up collection goes: its own name unless a rename maps it."""
    db, _, name = Renames(list(plan.rename)).target(unit.name).partition(".")
    return db, name


def _batches(raws: Iterator[bytes]) -> Iterator[list[RawBSONDocument]]:
    batch: list[RawBSONDocument] = []
    size = 0
    for raw in raws:
        batch.append(RawBSONDocument(raw))
        size += len(raw)
        if len(batch) >= INSERT_BATCH_DOCS or size >= INSERT_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _insert_all(collection, batches, mode: RestoreMode, namespace: str) -> tuple[int, int]:
    """Insert batches on INSERT_WORKERS threads, at most two batches each in flight, so
    the server's write path stays busy while memory stays bounded."""
    written = skipped = 0
    with ThreadPoolExecutor(INSERT_WORKERS, thread_name_prefix="backstop-insert") as pool:
        pending: deque[Future] = deque()
        try:
            for batch in batches:
                pending.append(pool.submit(_insert, collection, batch, mode, namespace))
                if len(pending) >= 2 * INSERT_WORKERS:
                    w, s = pending.popleft().result()
                    written, skipped = written + w, skipped + s
            while pending:
                w, s = pending.popleft().result()
                written, skipped = written + w, skipped + s
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return written, skipped


def _list(value: Any) -> list[str]:
    if not value:
        return []
    return [p for p in value.split(",") if p] if isinstance(value, str) else list(value)


def _uuid_hex(info: Mapping[str, Any]) -> str | None:
    uuid = (info.get("info") or {}).get("uuid")
    return uuid.hex() if isinstance(uuid, bytes | bytearray) else None


def _index_specs(indexes: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Index definitions without server-specific fields, comparable across servers."""
    specs = []
    for index in indexes:
        spec = {k: v for k, v in index.items() if k not in ("v", "ns")}
        spec["key"] = [[k, v] for k, v in index["key"].items()]
        specs.append(json.loads(json_util.dumps(spec, json_options=_JSON)))
    return sorted(specs, key=lambda s: s["name"])


def _files(unit: StoredUnit) -> tuple[StoredFile, StoredFile]:
    data = next(f for f in unit.files if f.format == FORMAT)
    metadata = next(f for f in unit.files if f.format == METADATA_FORMAT)
    return data, metadata


def _chosen(units, include: list[str]):
    for unit in units:
        if not include or selected(unit.name, include, []):
            yield unit


def _identical_in_target(collection, documents: list[RawBSONDocument]) -> bool:
    """Does the target hold each of these documents, byte for byte, under its _id?"""
    wanted = {id_key(d.raw): d.raw for d in documents}
    ids = [d["_id"] for d in documents]
    found = {id_key(d.raw): d.raw for d in collection.find({"_id": {"$in": ids}})}
    return found == wanted


def _insert(collection, batch, mode: RestoreMode, namespace: str) -> tuple[int, int]:
    try:
        collection.insert_many(batch, ordered=False)
        return len(batch), 0  # inserted_ids is not filled in for raw BSON documents
    except pm.BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        duplicates = [e for e in errors if e.get("code") == 11000]
        inserted = exc.details.get("nInserted", 0)
        if len(duplicates) == len(errors):
            if mode is RestoreMode.MERGE:  # the target's documents stay as they are
                return inserted, len(duplicates)
            # The target was checked empty (or emptied), so a duplicate is an earlier
            # attempt's insert (a retried restore): done, if it is the backup's document.
            if _identical_in_target(collection, [batch[e["index"]] for e in duplicates]):
                return inserted + len(duplicates), 0
        raise explain(exc, f"restoring {namespace}") from None
    except pm.DocumentTooLarge as exc:
        raise PermanentError(f"restoring {namespace}: document too large ({exc})") from None
