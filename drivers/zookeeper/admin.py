"""Physical ZooKeeper backups: the 3.9+ admin server's snapshot/restore commands, and
copies of a local dataDir (the newest snapshot.* plus the log.* files after it).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backstop.drivers.contract import (
    FileSink,
    FileSource,
    RestoreResult,
    StoredUnit,
    TargetCheck,
    Unit,
    UnitResult,
)
from backstop.drivers.digests import ALGORITHM, SetDigest
from backstop.drivers.errors import BadInputError, PermanentError, TransientError
from backstop.drivers.redact import redact_url, register_secret
from backstop.drivers.zookeeper import snapshot
from backstop.drivers.zookeeper.paths import parse_zk_url

SNAPSHOT_FORMAT = "zookeeper-snapshot/2"
LOG_FORMAT = "zookeeper-txnlog/2"
HTTP_TIMEOUT_S = 300
_CHUNK = 1 << 20


def admin_endpoint(unit_source: str, options: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The admin server's base URL and the Authorization header for it.

    `admin_url` (http://host:port) may be given, as an option or in the zk:// URL's query
    (zk://host:2181?admin_port=8081); otherwise the first ZooKeeper host with `admin_port`
    (default 8080). Digest credentials come from the zk:// URL.
    """
    parsed = parse_zk_url(unit_source)
    settings = parsed.params | {k: str(v) for k, v in options.items()}
    base = settings.get("admin_url")
    if not base:
        host = parsed.hosts.split(",")[0].rsplit(":", 1)[0]
        port = settings.get("admin_port", "8080")
        if not port.isdigit():
            raise BadInputError(f"admin_port {port!r} is not a port number")
        base = f"http://{host}:{port}"
    if urlsplit(base).scheme not in ("http", "https"):
        raise BadInputError(f"admin_url {redact_url(base)!r} must be http:// or https://")
    headers = {}
    if parsed.username is not None:
        register_secret(parsed.password)
        headers["Authorization"] = f"digest {parsed.username}:{parsed.password or ''}"
    return base.rstrip("/"), headers


def _request(
    url: str, headers: dict[str, str], data=None, method: str = "GET", *, stream: bool = False
):
    """Call an admin command. A JSON body with an "error" is a failure even under 200 OK
    (that is how 3.8 answers an unknown command). With `stream`, a binary response is
    returned open for reading; otherwise the parsed JSON body."""
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    command = url.rsplit("/", 1)[-1].split("?")[0]
    try:
        response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise _failure(command, url, exc.code, exc.read(4000).decode("utf-8", "replace")) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise TransientError(
            f"the ZooKeeper admin server at {redact_url(url)} is unreachable ({exc}); is "
            "admin.enableServer=true and admin_port right?"
        ) from None
    if stream and "json" not in (response.headers.get("Content-Type") or ""):
        return response
    with response:
        body = response.read(1 << 16).decode("utf-8", "replace")
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {}
    if stream or not isinstance(parsed, dict) or parsed.get("error"):
        raise _failure(command, url, response.status, body)
    return parsed


def _failure(command: str, url: str, code: int, body: str) -> Exception:
    lowered = body.lower()
    if code == 404 or "unknown command" in lowered:
        return PermanentError(
            f"the ZooKeeper admin server at {redact_url(url)} has no {command!r} command "
            "(it needs ZooKeeper 3.9 or later); use the logical mode instead"
        )
    if code in (401, 403) or "auth" in lowered:
        return PermanentError(
            f"the admin server refused {command!r} ({code}): it needs digest, x509 or IP "
            "authentication with ALL permission on /; give credentials in the zk:// URL"
        )
    if code == 429 or "rate" in lowered:
        return PermanentError(
            f"the admin server rate-limited {command!r} (zookeeper.admin.rateLimiterIntervalInMS, "
            "5 minutes by default); try again later"
        )
    if "not enabled" in lowered or "disabled" in lowered:
        return PermanentError(
            f"the {command!r} admin command is disabled on the server "
            f"(zookeeper.admin.{command}.enabled=false)"
        )
    return PermanentError(f"admin command {command!r} failed ({code}): {body[:300]}")


class _Tee:
    """Hands what it reads to the validator and, unchanged, to the backup file."""

    def __init__(self, response, out) -> None:
        self._response, self._out = response, out

    def read(self, n: int = -1) -> bytes:
        data = self._response.read(n if n and n > 0 else _CHUNK)
        if data:
            self._out.write(data, 0)
        return data


def backup_snapshot(unit: Unit, sink: FileSink) -> UnitResult:
    base, headers = admin_endpoint(unit.source, unit.options)
    response = _request(f"{base}/commands/snapshot?streaming=true", headers, stream=True)
    with response:
        last_zxid = response.headers.get("last_zxid")
        with sink.open("snapshot.zksn", format=SNAPSHOT_FORMAT) as out:
            tee = _Tee(response, out)
            try:
                summary = snapshot.validate(tee)
            except snapshot.SnapshotError as exc:
                raise PermanentError(f"the server streamed an invalid snapshot: {exc}") from None
            while tee.read(_CHUNK):  # nothing should follow; keep it if it does
                pass
    zxid = int(last_zxid, 16) if last_zxid else (summary.last_zxid or summary.max_zxid)
    return UnitResult(
        records=summary.user_nodes,
        point={"zxid": zxid, "zxid_hex": hex(zxid), "kind": "none"},
        meta=_summary_meta("admin-snapshot", summary),
    )


def _summary_meta(mode: str, summary: snapshot.SnapshotSummary) -> dict[str, Any]:
    return {
        "mode": mode,
        "digest": summary.digest,
        "digest_algorithm": ALGORITHM,
        "nodes": summary.user_nodes,
        "snapshot_nodes": summary.nodes,
        "compression": summary.compression,
        "dbid": summary.dbid,
        "last_zxid": summary.last_zxid,
        "chroot": "",
        "include": [],
        "exclude": [],
    }


_SNAP = re.compile(r"^snapshot\.([0-9a-f]+)(\.gz|\.snappy)?$")
_LOG = re.compile(r"^log\.([0-9a-f]+)$")


def backup_datadir(unit: Unit, sink: FileSink) -> UnitResult:
    """Copy the newest valid snapshot and the transaction logs needed after it."""
    data_dir = unit.options.get("data_dir")
    if not data_dir:
        raise BadInputError("mode datadir needs --option data_dir=/path/to/zookeeper/dataDir")
    folder = Path(data_dir)
    folder = folder / "version-2" if (folder / "version-2").is_dir() else folder
    if not folder.is_dir():
        raise BadInputError(f"ZooKeeper dataDir {str(folder)!r} does not exist here")
    snaps = sorted(
        ((int(m[1], 16), p) for p in folder.iterdir() if (m := _SNAP.match(p.name))), reverse=True
    )
    summary = None
    for zxid, path in snaps:
        try:
            with path.open("rb") as fh:
                summary = snapshot.validate(fh)
            chosen, chosen_zxid = path, zxid
            break
        except snapshot.SnapshotError:
            continue  # a snapshot being written right now: take the previous one
    if summary is None:
        raise PermanentError(f"no valid snapshot.* file in {folder}")
    logs = sorted((int(m[1], 16), p) for p in folder.iterdir() if (m := _LOG.match(p.name)))
    # The log that starts at or before the snapshot's zxid holds its first transactions.
    needed = [
        p
        for i, (start, p) in enumerate(logs)
        if start > chosen_zxid
        or (i + 1 < len(logs) and logs[i + 1][0] > chosen_zxid)
        or (i + 1 == len(logs))
    ]
    _copy(chosen, f"version-2/{chosen.name}", SNAPSHOT_FORMAT, sink)
    for path in needed:
        _copy(path, f"version-2/{path.name}", LOG_FORMAT, sink)
    return UnitResult(
        records=summary.user_nodes,
        point={
            "zxid": chosen_zxid,
            "zxid_hex": hex(chosen_zxid),
            "kind": "snapshot",
            "logs": [p.name for p in needed],
        },
        meta=_summary_meta("datadir", summary),
    )


def _copy(path: Path, name: str, fmt: str, sink: FileSink) -> None:
    with path.open("rb") as fh, sink.open(name, format=fmt) as out:
        while block := fh.read(_CHUNK):
            out.write(block, 0)


def check_physical_restore_target(unit: StoredUnit, target: str) -> None:
    if unit.meta.get("mode") == "datadir":
        raise BadInputError(
            "a dataDir backup is restored by hand (docs/zookeeper.md): stop the server, move its "
            "dataDir/version-2 aside, decompress the backup's version-2/*.zst files into it "
            "(zstd -d), start the server"
        )
    if parse_zk_url(target).chroot:
        raise BadInputError("a snapshot restore replaces the whole database: no chroot allowed")


def restore_snapshot(unit: StoredUnit, target: str, source: FileSource) -> RestoreResult:
    """POST the snapshot to the target's admin server (3.9+), streamed from the store."""
    [file] = [f for f in unit.files if f.format == SNAPSHOT_FORMAT]
    base, headers = admin_endpoint(target, {})
    headers = headers | {"Content-Type": "application/octet-stream"}
    with source.open(file) as stream:
        body = _Iterable(stream)
        request_headers = headers | {"Content-Length": str(file.raw_bytes)}
        _request(f"{base}/commands/restore", request_headers, data=body, method="POST")
    return RestoreResult(records_written=unit.records)


class _Iterable:
    """A request body that streams from the store in chunks."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def __iter__(self):
        while block := self._stream.read(_CHUNK):
            yield block


def verify_snapshot_restore(unit: StoredUnit, target: str, source: FileSource) -> TargetCheck:
    """Walk the restored server logically and compare with the snapshot's digest."""
    from backstop.drivers.zookeeper.client import reader
    from backstop.drivers.zookeeper.paths import Selection
    from backstop.drivers.zookeeper.walk import walk
    from backstop.drivers.zookeeper.znodes import digest_problems, node_hash

    digest = SetDigest()
    with reader(target) as zk:
        for node in walk(zk, ["/"], Selection(), skip_system=True):
            if not node.ephemeral_owner:
                digest.add(node_hash(node.path, node.data, node.acls))
    problems = digest_problems(digest, unit.meta, "snapshot")
    return TargetCheck(unit=unit.name, ok=not problems, records=digest.count, problems=problems)
