"""Fuzzing the parsers of everything backstop reads from outside (issue 11).

Whatever the bytes or text, each parser either succeeds or raises one of the project's
errors (BackstopError subclasses: IntegrityError for stored data, BadInputError for
user input), never another exception, and within a bounded amount of memory however
large the lengths the input claims. Inputs are random bytes and valid records with a
few bytes changed, cut or replaced by large lengths, which reach the length checks.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tracemalloc
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import bson
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backstop.drivers.contract import StoredFile, StoredUnit
from backstop.drivers.docstore import bsonfile
from backstop.drivers.docstore.names import Renames, check_patterns, selected
from backstop.drivers.errors import BackstopError
from backstop.drivers.redact import mask_secrets, redact_url, resolve_placeholders, url_password
from backstop.drivers.registry import get_driver
from backstop.drivers.schemaless.cells import pack_cells, read_cells
from backstop.drivers.zookeeper import snapshot, znodes
from backstop.drivers.zookeeper.paths import Selection, parse_zk_url
from backstop.tasks.manifest import (
    ConsistencyInfo,
    DriverInfo,
    Manifest,
    QualityResult,
    totals_of,
)
from backstop.tasks.packaging import CheckedStream
from backstop.tasks.store import ArtifactStore, check_file_name

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MEMORY_LIMIT = 32 << 20  # far below any length a crafted input claims


def parsed(call: Callable[..., Any], *args: Any) -> Any:
    """`call(*args)`, or None when it raised a BackstopError; any other exception fails
    the test, and so does allocating more than MEMORY_LIMIT on the way."""
    tracemalloc.start()
    try:
        return call(*args)
    except BackstopError:
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MEMORY_LIMIT, f"{peak >> 20} MiB allocated"


class Stored(io.BytesIO):
    """A stored file's stream as restore hands it to a driver: named, and knowing how
    many bytes are left (here: possibly a lie, as a crafted manifest's raw_bytes)."""

    name = "fuzz/backup/file.zst"

    def __init__(self, data: bytes, claimed: int | None = None) -> None:
        super().__init__(data)
        self._size = len(data) if claimed is None else claimed

    @property
    def remaining(self) -> int:
        return self._size - self.tell()


_BIG_LENGTHS = [
    b"\xff\xff\xff\x7f",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x80",
    b"\x7f\xff\xff\xff",
    b"\x00\x00\x00\x04",
    b"\x00\x10\x00\x00",
]


@st.composite
def _mutations(draw: st.DrawFn, valid: bytes) -> bytes:
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["byte", "cut", "length", "insert"]))
        if kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "length":
            data[at : at + 4] = draw(st.sampled_from(_BIG_LENGTHS))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def fuzzed(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Random bytes, valid content, and valid content altered."""
    return st.one_of(st.binary(max_size=600), valid, valid.flatmap(_mutations))


@st.composite
def streams(draw: st.DrawFn, content: st.SearchStrategy[bytes]) -> io.BytesIO:
    data = draw(content)
    how = draw(st.sampled_from(["plain", "exact", "lying"]))
    if how == "plain":
        return io.BytesIO(data)
    if how == "exact":
        return Stored(data)
    return Stored(data, draw(st.integers(-10, 1 << 40)))


def drain(iterator) -> int:
    return sum(1 for _ in iterator)


# -- Schemaless cells -----------------------------------------------------------------
_I64 = st.integers(-(1 << 63), (1 << 63) - 1)
_cells = st.lists(
    st.tuples(
        _I64,
        st.uuids().map(str),
        st.text(max_size=20),
        _I64,
        st.binary(max_size=300),
        _I64,
    ),
    max_size=6,
).map(lambda rows: pack_cells(rows)[0])


@FUZZ
@given(streams(fuzzed(_cells)), st.integers(1, 4))
def test_cell_reader(stream, batch):
    parsed(lambda: drain(read_cells(stream, batch)))


# -- Docstore: BSON documents and collection metadata ----------------------------------
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=40),
    st.lists(st.integers(-100, 100), max_size=3),
)
_names = st.text(st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=6)
_documents = st.lists(
    st.dictionaries(_names, _values, max_size=5).map(lambda d: bson.encode({"_id": 1, **d})),
    max_size=4,
).map(b"".join)


def _documents_and_ids(stream) -> int:
    count = 0
    for raw in bsonfile.read_documents(stream):
        bsonfile.id_key(raw)
        count += 1
    return count


@FUZZ
@given(streams(fuzzed(_documents)))
def test_bson_reader_and_id_key(stream):
    parsed(_documents_and_ids, stream)


@FUZZ
@given(fuzzed(st.dictionaries(_names, _values, max_size=5).map(bson.encode)))
def test_id_key_of_any_document(raw):
    parsed(bsonfile.id_key, raw)


_metadata = st.fixed_dictionaries(
    {
        "options": st.dictionaries(st.text(max_size=5), st.integers() | st.text(), max_size=3),
        "indexes": st.lists(
            st.fixed_dictionaries({"name": st.text(max_size=5), "key": st.just({"a": 1})}),
            max_size=2,
        ),
    }
).map(lambda d: json.dumps(d).encode())


@FUZZ
@given(streams(fuzzed(st.one_of(_metadata, st.just(b"[" * 5000)))))
def test_collection_metadata(stream):
    parsed(bsonfile.read_metadata, stream)


# -- ZooKeeper: znode records and snapshots ---------------------------------------------
_segment = st.text(
    st.characters(blacklist_characters="/\x00", codec="utf-8"), min_size=1, max_size=6
).filter(lambda s: s not in (".", ".."))
_paths = st.lists(_segment, min_size=0, max_size=3).map(lambda s: "/" + "/".join(s))
_acls = st.lists(
    st.tuples(st.integers(0, 31), st.text(max_size=6), st.text(max_size=8)), max_size=2
).map(tuple)
_stat = st.tuples(*[st.integers(-(1 << 31), (1 << 31) - 1)] * 9)
_znodes = st.lists(
    st.one_of(
        st.builds(
            znodes.Znode,
            st.just(znodes.NODE),
            _paths,
            st.one_of(st.none(), st.binary(max_size=50)),
            _acls,
            _stat,
        ),
        st.builds(znodes.Znode, st.just(znodes.DELETED), _paths),
    ),
    max_size=5,
).map(lambda nodes: b"".join(znodes.pack(n) for n in nodes))


@FUZZ
@given(streams(fuzzed(_znodes)))
def test_znode_reader(stream):
    parsed(lambda: drain(znodes.read(stream)))


@FUZZ
@given(st.text(max_size=30))
def test_znode_path_check(path):
    parsed(znodes.check_path, path)


def _jute_string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">i", -1)
    data = text.encode()
    return struct.pack(">i", len(data)) + data


def _snapshot(nodes: list[tuple[str, bytes | None]], acl_lists: int, digest: bool) -> bytes:
    """A ZooKeeper snapshot as FileSnap writes it (version 2), sealed with its Adler32."""
    out = [
        struct.pack(">iiq", snapshot.MAGIC, 2, 7),
        struct.pack(">i", 1),
        struct.pack(">qi", 1, 3),
    ]
    out.append(struct.pack(">i", acl_lists))
    for ref in range(acl_lists):
        out += [
            struct.pack(">qi", ref, 1),
            struct.pack(">i", 31),
            _jute_string("world"),
            _jute_string("anyone"),
        ]
    seen: set[str] = {""}
    for path, data in [("", b""), *nodes]:
        if path and (path in seen or path.rsplit("/", 1)[0] not in seen):
            continue
        seen.add(path)
        out += [
            _jute_string(path),
            _jute_string(None) if data is None else struct.pack(">i", len(data)) + data,
            struct.pack(">q", -1),
            struct.pack(">qqqqiiiqq", 1, 2, 0, 0, 0, 0, 0, 0, 2),
        ]
    out.append(_jute_string("/"))
    body = b"".join(out)
    sealed = body + struct.pack(">q", zlib.adler32(body)) + _jute_string("/")
    if digest:
        section = struct.pack(">qiq", 5, 2, 99)
        adler = zlib.adler32(section, zlib.adler32(sealed))
        sealed += section + struct.pack(">q", adler) + _jute_string("/")
    return sealed


def _snappy(data: bytes) -> bytes:
    import cramjam

    blocks = [data[i : i + 64] for i in range(0, len(data), 64)]
    out = [snapshot.SNAPPY_MAGIC, struct.pack(">ii", 1, 1)]
    for block in blocks:
        compressed = bytes(cramjam.snappy.compress_raw(block))
        out += [struct.pack(">i", len(compressed)), compressed]
    return b"".join(out)


_snapshots = st.builds(
    _snapshot,
    st.lists(st.tuples(_paths, st.one_of(st.none(), st.binary(max_size=30))), max_size=4),
    st.integers(0, 2),
    st.booleans(),
)


@FUZZ
@given(
    streams(fuzzed(st.one_of(_snapshots, _snapshots.map(gzip.compress), _snapshots.map(_snappy))))
)
def test_snapshot_validator(stream):
    parsed(snapshot.validate, stream)


def test_the_snapshot_builder_makes_valid_snapshots():
    data = _snapshot([("/a", b"x"), ("/a/b", None)], 1, True)
    for wrapped in (data, gzip.compress(data), _snappy(data)):
        summary = snapshot.validate(io.BytesIO(wrapped))
        assert summary.nodes == 3 and summary.zxid_digest is not None


# -- the example plugin driver ---------------------------------------------------------
def _kv_records(items: dict[str, bytes]) -> bytes:
    return b"".join(
        struct.pack("<HI", len(k.encode()), len(v)) + k.encode() + v for k, v in items.items()
    )


@FUZZ
@given(
    streams(fuzzed(st.dictionaries(_segment, st.binary(max_size=40), max_size=4).map(_kv_records)))
)
def test_kvdir_reader(stream):
    from example_driver.kvdir import read_records

    parsed(lambda: drain(read_records(stream)))


# -- stored files: decompression and checksums -----------------------------------------
_payloads = st.binary(max_size=2000)


def _compressed(payload: bytes, window_log: int) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=window_log)
    return zstandard.ZstdCompressor(compression_params=params).compress(payload)


@FUZZ
@given(
    st.builds(_compressed, _payloads, st.sampled_from([10, 17, 27, 31])).flatmap(
        lambda stored: st.one_of(st.just(stored), _mutations(stored))
    ),
    st.integers(-5, 1 << 40),
)
def test_stored_file_decompression(stored, raw_bytes):
    file = StoredFile(
        name="f.zst",
        format="any",
        records=0,
        bytes=len(stored),
        sha256=hashlib.sha256(stored).hexdigest(),
        raw_bytes=raw_bytes,
        raw_sha256="0" * 64,
    )

    def read_all() -> None:
        stream = CheckedStream(io.BytesIO(stored), file, "fuzz/f.zst", None)
        while stream.read(1 << 16):
            pass

    parsed(read_all)


# -- manifests -------------------------------------------------------------------------
def _valid_manifest(technology: str, backup_id: str) -> dict:
    unit = StoredUnit(
        name="u",
        source="sqlite:///x.db",
        records=1,
        files=[
            StoredFile(
                name="u/cells.zst",
                format="schemaless-cells/1",
                records=1,
                bytes=1,
                sha256="0" * 64,
                raw_bytes=1,
                raw_sha256="0" * 64,
            )
        ],
    )
    now = datetime.now(UTC)
    manifest = Manifest(
        technology=technology,
        backup_id=backup_id,
        backstop_version="0",
        driver=DriverInfo(name=technology, version="0"),
        sources=["sqlite:///x.db"],
        started_at=now,
        finished_at=now,
        consistency=ConsistencyInfo(kind="snapshot"),
        units=[unit],
        totals=totals_of([unit]),
        quality=QualityResult(status="passed"),
    )
    return json.loads(manifest.model_dump_json())


_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def _manifest_texts(draw: st.DrawFn) -> bytes:
    manifest = _valid_manifest("schemaless", "20261126T120501Z-3fa2")
    if draw(st.booleans()):
        # Replace one value somewhere in the manifest by any JSON value.
        node: Any = manifest
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            key = draw(st.sampled_from(keys))
            child = node[key]
            if not (isinstance(child, dict | list) and child) or draw(st.booleans()):
                node[key] = draw(_json)
                break
            node = child
    text = json.dumps(manifest).encode()
    return draw(st.one_of(st.just(text), _mutations(text)))


_STORE = ArtifactStore(f"memory://fuzz-{uuid.uuid4().hex}")


@FUZZ
@given(
    st.one_of(
        _manifest_texts(),
        st.binary(max_size=300),
        _json.map(json.dumps).map(str.encode),
        st.just(b"[" * 100_000),
    )
)
def test_manifest_reading(text):
    technology, backup_id = "schemaless", "20261126T120501Z-3fa2"
    path = f"{_STORE.backup_dir(technology, backup_id)}/manifest.json"
    _STORE.fs.pipe_file(path, text)
    parsed(_STORE.read_manifest, technology, backup_id)


# -- URLs, names and patterns (user input) ---------------------------------------------
_SCHEMES = [
    "zk://",
    "mongodb://",
    "mongodb+srv://",
    "sqlite:///",
    "postgresql+psycopg://",
    "mysql+pymysql://",
    "kvdir://",
    "http://",
    "",
]
_urls = st.one_of(
    st.text(max_size=60),
    st.tuples(st.sampled_from(_SCHEMES), st.text(max_size=50)).map("".join),
    st.tuples(
        st.sampled_from(_SCHEMES),
        st.text(max_size=8),
        st.sampled_from(["", ":", "@", ":pw@", "%", "${env:NOPE}", "${secret:x}"]),
        st.text(max_size=10),
        st.sampled_from(["", ":2181", ":0", ":99999", ":²", "/db", "?password=x", "?admin_port=1"]),
        st.text(max_size=10),
    ).map("".join),
)


@FUZZ
@given(st.sampled_from(["schemaless", "docstore", "zookeeper"]), _urls)
def test_driver_url_checks(technology, url):
    parsed(get_driver(technology).check_urls, [url], "source")


@FUZZ
@given(_urls)
def test_url_redaction_and_placeholders(url):
    for call in (redact_url, mask_secrets, url_password, parse_zk_url, resolve_placeholders):
        parsed(call, url)


@FUZZ
@given(
    st.one_of(
        st.text(max_size=40),
        _paths.map(lambda p: p.lstrip("/")),
        st.sampled_from(["..", "a/../b", "/etc/passwd", "a//b", "a\\b", "\x00"]),
    )
)
def test_store_file_names(name):
    store = ArtifactStore(f"memory://fuzz-names-{uuid.uuid4().hex}")
    if parsed(check_file_name, name) is not None:
        folder = store.backup_dir("schemaless", "20261126T120501Z-3fa2")
        assert store.file_path("schemaless", "20261126T120501Z-3fa2", name).startswith(folder + "/")


@FUZZ
@given(st.text(max_size=30), st.text(max_size=30))
def test_store_names_and_backup_references(technology, ref):
    store = _STORE
    parsed(get_driver, technology)
    parsed(store.resolve, "schemaless", ref)
    parsed(store.backup_dir, technology, ref)


_patterns = st.one_of(
    st.text(max_size=20),
    st.tuples(
        st.text(max_size=6), st.sampled_from(["", ".", ".*", "*.", "?"]), st.text(max_size=6)
    ).map("".join),
)


@FUZZ
@given(_patterns, _patterns, st.text(max_size=20))
def test_docstore_names(pattern, other, namespace):
    if parsed(check_patterns, [pattern]) is not None:
        parsed(selected, namespace, [pattern], [])
    renames = parsed(Renames, [(pattern, other)])
    if renames is not None:
        parsed(renames.target, namespace)
        parsed(renames.check_distinct, [namespace])


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.text(max_size=20),
            _paths,
            _paths.map(lambda p: p + "/*"),
            _paths.map(lambda p: p + "/**"),
        ),
        max_size=2,
    ),
    _paths,
)
def test_zookeeper_patterns(patterns, path):
    selection = parsed(Selection, patterns)
    if selection is not None:
        parsed(selection.wants, path)
        parsed(selection.descends, path)


@pytest.mark.parametrize("port", ["²", "٣", "1_0", " 1", "+1"])
def test_zk_url_with_a_port_that_is_not_ascii_digits_is_bad_input(port):
    from backstop.drivers.errors import BadInputError

    with pytest.raises(BadInputError):
        parse_zk_url(f"zk://host:{port}")
