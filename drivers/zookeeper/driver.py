"""The ZooKeeper driver: logical walks (any version), admin-server snapshots (3.9+)."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import Any

from kazoo import exceptions as kz
from kazoo.security import ACL, OPEN_ACL_UNSAFE, Id

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
    StoredUnit,
    TargetCheck,
    Unit,
    UnitResult,
    run_to_end,
)
from backstop.drivers.digests import ALGORITHM, SetDigest
from backstop.drivers.errors import BadInputError, ErrorKind, PermanentError
from backstop.drivers.identity import same_place
from backstop.drivers.redact import redact_url
from backstop.drivers.zookeeper import admin
from backstop.drivers.zookeeper.client import (
    classify,
    connect,
    ensemble_identity,
    explain,
    reader,
    readers,
    same_ensemble,
)
from backstop.drivers.zookeeper.paths import Selection, parse_zk_url
from backstop.drivers.zookeeper.quality import SUITE
from backstop.drivers.zookeeper.walk import (
    child_path,
    parallel_walk,
    read_nodes,
    stat_pass,
    walk,
    walk_fields,
)
from backstop.drivers.zookeeper.znodes import (
    DELETED,
    FORMAT,
    NODE,
    RecordPacker,
    Znode,
    digest_problems,
    node_hash,
    pack_parts,
    read,
)

MODES = ("logical", "admin-snapshot", "datadir")
WINDOW = 256  # kazoo requests in flight when restoring
MAX_PASSES = 5
# Read sessions walking a tree together: ZooKeeper answers one session's requests in
# order, so a few sessions keep its worker threads busy (measured on 2 cores, 100k
# znodes: 1 session 5.25 s, 3 sessions 3.16 s, 4 sessions 2.68 s).
DEFAULT_SESSIONS = 4
QUALITY_CHUNK = 100_000  # znodes per quality chunk
WRITE_CHUNK = 1 << 20
# A multi-op transaction stays well under jute.maxbuffer (1 MB by default).
BATCH_BYTES = 512 * 1024
BATCH_OPS = 1000
_OPEN_ACL = tuple((a.perms, a.id.scheme, a.id.id) for a in OPEN_ACL_UNSAFE)


class ZooKeeperDriver(Driver):
    name = "zookeeper"
    version = "1.0.0"
    capabilities = Capabilities(
        consistency=(ConsistencyKind.SNAPSHOT, ConsistencyKind.CONVERGED, ConsistencyKind.NONE),
        modes=MODES,
        selective_restore=True,
    )
    url_schemes = ("zk",)
    quality_suite = SUITE
    backup_options = {
        "mode": "logical (default), admin-snapshot or datadir",
        "include": "znode path patterns to back up (logical mode)",
        "exclude": "znode path patterns to leave out (logical mode)",
        "sessions": "parallel ZooKeeper sessions of a logical backup",
        "admin_url": "the admin server, http://host:port (admin-snapshot mode)",
        "admin_port": "the admin server's port on the first host (default 8080)",
        "data_dir": "the server's dataDir (datadir mode)",
    }
    restore_options = {
        "include_system": "true: allow restoring the /zookeeper subtree",
    }
    single_url = "an ensemble is host:port,host:port in one URL"

    def classify(self, exc: BaseException) -> ErrorKind:
        return classify(exc)

    def check_urls(self, urls: Sequence[str], role: str) -> None:
        super().check_urls(urls, role)
        parse_zk_url(urls[0])

    def identity(self, url: str) -> str:
        """The ensemble (as its members' configuration names it, or the resolved
        addresses of a standalone server) plus the chroot: a chroot inside another is
        inside its place."""
        parsed = parse_zk_url(url)
        return f"zookeeper://{ensemble_identity(parsed)}{parsed.chroot}"

    def reaches_same(self, url_a: str, url_b: str) -> bool:
        """A standalone server's identity is its resolved address, and one server has
        many (127.0.0.2, a DNS alias, another interface): when the chroots overlap,
        ask the servers whether they are one ensemble."""
        a, b = parse_zk_url(url_a), parse_zk_url(url_b)
        if not same_place(a.chroot or "/", b.chroot or "/"):
            return False
        return same_ensemble(a.hosts, b.hosts)

    # -- backup ---------------------------------------------------------------------
    def plan_backup(self, sources: Sequence[str], options: Mapping[str, Any]) -> list[Unit]:
        mode = options.get("mode", "logical")
        if mode not in MODES:
            raise BadInputError(
                f"unknown zookeeper mode {mode!r}; choose one of {', '.join(MODES)}"
            )
        include, exclude = _patterns(options.get("include")), _patterns(options.get("exclude"))
        Selection(include, exclude)  # reject bad patterns before connecting
        if mode != "logical" and (include or exclude):
            raise BadInputError(f"--include/--exclude apply to logical backups, not {mode}")
        return [
            Unit(
                name="tree",
                source=sources[0],
                options={
                    "mode": mode,
                    "include": include,
                    "exclude": exclude,
                    **{k: v for k, v in options.items() if k not in ("include", "exclude")},
                },
            )
        ]

    def backup_unit(self, unit: Unit, sink: FileSink) -> UnitResult:
        mode = unit.options.get("mode", "logical")
        if mode == "admin-snapshot":
            return admin.backup_snapshot(unit, sink)
        if mode == "datadir":
            return admin.backup_datadir(unit, sink)
        return self._backup_logical(unit, sink)

    def _backup_logical(self, unit: Unit, sink: FileSink) -> UnitResult:
        selection = Selection(unit.options.get("include"), unit.options.get("exclude"))
        url = parse_zk_url(unit.source)
        skip_system = not url.chroot
        ephemeral = 0
        with connect(unit.source) as client:
            version = ".".join(map(str, client.server_version()))
        sessions = int(unit.options.get("sessions", DEFAULT_SESSIONS))
        with readers(unit.source, sessions) as pool:
            zk = pool[0]
            started = zk.current_zxid()
            with sink.open("tree.znodes", format=FORMAT) as out:
                copy = _Copy(out)
                record = copy.node
                for path, data, stat, acls in walk_fields(pool, ["/"], selection, skip_system):
                    if stat[7]:  # ephemeralOwner: a session's node, no part of a backup
                        ephemeral += 1
                        continue
                    record(path, data, acls, stat)
                result = _converge(zk, copy, selection, skip_system, walk_started=started)
                copy.flush()
        digest = copy.digest
        # The suite's columns of the tree as stored (its final state: a later record of
        # a path supersedes an earlier one), checked in the packaging pass.
        for chunk in _path_chunks(unit, iter(copy.index), selection):
            sink.observe(chunk)
        point = {
            "zxid": result["zxid"],
            "zxid_hex": hex(result["zxid"]),
            "walk_started_zxid": started,
            "passes": result["passes"],
            "kind": result["kind"],
        }
        if "zxid_end" in result:
            point["zxid_end"] = result["zxid_end"]
        return UnitResult(
            records=digest.count,
            point=point,
            meta={
                "mode": "logical",
                "digest": digest.hex,
                "digest_algorithm": ALGORITHM,
                "nodes": digest.count,
                "skipped_ephemeral": ephemeral,
                "chroot": url.chroot,
                "include": unit.options.get("include") or [],
                "exclude": unit.options.get("exclude") or [],
                "server_version": version,
            },
        )

    def consistency(
        self, quiesce_handle: dict[str, Any] | None, units: Sequence[StoredUnit]
    ) -> Consistency:
        [unit] = units
        point = dict(unit.point)
        kind = ConsistencyKind(point.pop("kind", "snapshot"))
        warnings = []
        if kind is ConsistencyKind.CONVERGED:
            warnings.append(
                "ZooKeeper applied other transactions while the copy was checked: every node "
                "was unchanged between its read and its re-check, but the copy is not proven "
                f"to be one instant (zxid {point['zxid_hex']}..{hex(point['zxid_end'])})"
            )
        elif kind is ConsistencyKind.NONE and unit.meta.get("mode") == "admin-snapshot":
            warnings.append(
                "a ZooKeeper snapshot of a live server is fuzzy: it is serialized while writes "
                f"continue, up to last_zxid {point['zxid_hex']}; nodes changed during it may be "
                "at different points (use the logical mode for a checked point in time)"
            )
        elif kind is ConsistencyKind.NONE:
            warnings.append(
                f"the tree kept changing: no consistent copy after {point['passes']} passes; "
                "this backup is fuzzy"
            )
        return Consistency(kind=kind, point=point, warnings=warnings)

    # -- restore --------------------------------------------------------------------
    def prepare_restore(
        self, units: Sequence[StoredUnit], targets: Sequence[str], plan: RestorePlan
    ) -> dict[str, Any] | None:
        mode = plan.mode
        self.check_urls(targets, "target")
        Selection(list(plan.include))  # reject bad patterns before touching the target
        [unit] = units
        target = parse_zk_url(targets[0])
        if unit.meta.get("mode") != "logical":
            admin.check_physical_restore_target(unit, targets[0])
            return None
        with connect(_without_chroot(targets[0])) as zk:
            # Nodes created after this zxid are the restore's own (a retried attempt
            # finds its earlier attempt's nodes by it); older ones are the target's.
            before = {"zxid": _current_zxid(zk)}
            root = target.chroot or "/"
            if zk.exists(root) is None:
                return before
            children = [c for c in zk.get_children(root) if target.chroot or c != "zookeeper"]
            if children and mode is RestoreMode.FAIL_IF_EXISTS:
                raise BadInputError(
                    f"target {redact_url(targets[0])} already holds {len(children)} node(s) under "
                    f"{root} ({', '.join(sorted(children)[:5])}); restore refuses to write into a "
                    "non-empty target and left it untouched; choose --mode overwrite or --mode merge"
                )
        return before

    def restore_unit(
        self, unit: StoredUnit, target: str, source: FileSource, plan: RestorePlan
    ) -> RestoreResult:
        mode = plan.mode
        if unit.meta.get("mode") != "logical":
            return admin.restore_snapshot(unit, target, source)
        chroot = parse_zk_url(target).chroot
        [file] = unit.files
        # Read the whole archive once before writing: a malformed record or an unsafe path
        # (.., NUL) must refuse the restore while the target is still untouched. The same
        # pass collects the ACLs to set once every node exists.
        with source.open(file) as stream:
            acls = _final_acls(_refuse_system(_selected(read(stream), plan.include), chroot, plan))
        with connect(_without_chroot(target)) as zk:
            root = chroot or "/"
            zk.ensure_path(root)
            if mode is RestoreMode.OVERWRITE:
                # Every attempt starts by removing what it replaces (an earlier attempt's
                # nodes included); with --include, only the selected subtrees.
                _clear(zk, root, keep_system=not chroot, include=plan.include)
            before = plan.before.get("zxid")
            loader = _Loader(zk, chroot, merge=mode is RestoreMode.MERGE, before_zxid=before)
            with source.open(file) as stream:
                for node in _selected(read(stream), plan.include):
                    loader.apply(node)
            loader.finish()
            # The real ACLs last, once every node exists (an ACL may deny us CREATE).
            _apply_acls(zk, chroot, acls, loader.kept if loader.merge else set())
        return RestoreResult(records_written=loader.created, records_skipped=len(loader.kept))

    def verify_unit(
        self, unit: StoredUnit, target: str, source: FileSource, plan: RestorePlan
    ) -> TargetCheck:
        return run_to_end(self.verify_with_quality(unit, target, source, plan))

    def verify_with_quality(
        self, unit: StoredUnit, target: str, source: FileSource, plan: RestorePlan
    ) -> Generator[QualityChunk, None, TargetCheck]:
        """One walk of the target (logical backups): the digest of its tree, or with
        merge or --include each backed-up node compared, and the paths for the quality
        suite (the chunks target_quality_chunks would give)."""
        if unit.meta.get("mode") != "logical":
            return admin.verify_snapshot_restore(unit, target, source)
        expected = kept_before = None
        if plan.mode is RestoreMode.MERGE or plan.include:
            [file] = unit.files
            with source.open(file) as stream:
                expected = _final_hashes(_selected(read(stream), plan.include))
            # Merge keeps the nodes the target held before the restore as they were.
            kept_before = plan.before.get("zxid") if plan.mode is RestoreMode.MERGE else None
        tally = _TargetTally(expected, kept_before)
        selection = _unit_selection(unit)
        skip_system = not parse_zk_url(target).chroot
        with readers(target, DEFAULT_SESSIONS) as sessions:
            nodes = parallel_walk(sessions, ["/"], selection, skip_system=skip_system)
            yield from _path_chunks(unit, tally.paths(nodes), selection)
            tally.read_unwalked(sessions[0])
        return tally.check(unit)

    def safety_backup_options(
        self, units: Sequence[StoredUnit], targets: Sequence[str], plan: RestorePlan
    ) -> dict[str, Any] | None:
        target = parse_zk_url(targets[0])
        with connect(_without_chroot(targets[0])) as zk:
            root = target.chroot or "/"
            if zk.exists(root) is None:
                return None
            children = [c for c in zk.get_children(root) if target.chroot or c != "zookeeper"]
        return {} if children else None

    def restore_parts(
        self, units: Sequence[StoredUnit], source: FileSource, plan: RestorePlan
    ) -> list[str] | None:
        """The subtrees the restore writes, as paths under the target's root: the
        backup's top-level nodes, or with --include the topmost selected nodes."""
        [unit] = units
        if unit.meta.get("mode") != "logical":
            return None
        [file] = unit.files
        with source.open(file) as stream:
            paths = _final_hashes(_selected(read(stream), plan.include))
        paths.pop("/", None)
        if not plan.include:
            return sorted({"/" + p[1:].split("/", 1)[0] for p in paths})
        return sorted(p for p in paths if (p.rsplit("/", 1)[0] or "/") not in paths)

    def absent_parts(self, targets: Sequence[str], parts: Sequence[str]) -> list[str]:
        """For each part the target lacks, its topmost missing node (a restore creates
        missing parents too); "/" when even the target's chroot is missing."""
        chroot = parse_zk_url(targets[0]).chroot
        absent: set[str] = set()
        with connect(_without_chroot(targets[0])) as zk:
            if chroot and zk.exists(chroot) is None:
                return ["/"]
            for part in parts:
                segments = part[1:].split("/")
                for depth in range(1, len(segments) + 1):
                    path = "/" + "/".join(segments[:depth])
                    if zk.exists(_join(chroot or "/", path)) is None:
                        absent.add(path)
                        break
        return sorted(absent)

    def drop_parts(self, targets: Sequence[str], parts: Sequence[str]) -> None:
        chroot = parse_zk_url(targets[0]).chroot
        with connect(_without_chroot(targets[0])) as zk:
            for part in parts:
                if part == "/" and not chroot:
                    _clear(zk, "/", keep_system=True)
                    continue
                if not chroot and (part == "/zookeeper" or part.startswith("/zookeeper/")):
                    continue  # ZooKeeper's own namespace is never removed
                with contextlib.suppress(kz.NoNodeError):
                    zk.delete(_join(chroot or "/", part), recursive=True)

    # -- data quality ---------------------------------------------------------------
    def quality_parts(self, unit: StoredUnit) -> dict[str, QualityPart]:
        if unit.meta.get("mode") != "logical":
            raise NotImplementedError  # snapshots are checked by the snapshot validator
        return {unit.name: QualityPart(records=unit.records)}

    def quality_chunks(self, unit: StoredUnit, source: FileSource) -> Iterator[QualityChunk]:
        self.quality_parts(unit)
        [file] = unit.files
        with source.open(file) as stream:
            # Later records of a path supersede earlier ones (the convergence passes):
            # the tree is its final state, held as the backup and restore hold it.
            final: dict[str, None] = {}
            for node in read(stream):
                if node.kind == DELETED:
                    final.pop(node.path, None)
                else:
                    final[node.path] = None
        yield from _path_chunks(unit, iter(final), _unit_selection(unit))

    def target_quality_chunks(
        self, unit: StoredUnit, target: str, plan: RestorePlan
    ) -> Iterator[QualityChunk]:
        self.quality_parts(unit)
        selection = _unit_selection(unit)
        with reader(target) as zk:
            nodes = walk(zk, ["/"], selection, skip_system=not parse_zk_url(target).chroot)
            paths = (n.path for n in nodes if not n.ephemeral_owner)
            yield from _path_chunks(unit, paths, selection)


def _unit_selection(unit: StoredUnit) -> Selection:
    """The subtrees a logical backup holds (its --include/--exclude)."""
    return Selection(unit.meta.get("include"), unit.meta.get("exclude"))


def _path_chunks(
    unit: StoredUnit | Unit, paths: Iterator[str], selection: Selection
) -> Iterator[QualityChunk]:
    """Paths with the parent each must have; a parent outside the backed-up selection
    (above an --include subtree) is not required."""
    batch: list[str] = []
    parents: list[str | None] = []
    # Without --include every selected node's parent is selected too (an excluded
    # parent excludes its subtree): the per-path check is needed only with it.
    check = selection.wants if selection.include else None
    for path in paths:
        parent = (path.rpartition("/")[0] or "/") if path != "/" else None
        batch.append(path)
        parents.append(parent if parent and (check is None or check(parent)) else None)
        if len(batch) >= QUALITY_CHUNK:
            yield QualityChunk(part=unit.name, columns={"path": batch, "parent": parents})
            batch, parents = [], []
    if batch:
        yield QualityChunk(part=unit.name, columns={"path": batch, "parent": parents})


# -- helpers --------------------------------------------------------------------------
def _patterns(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [p for p in value.split(",") if p]
    return list(value)


def _selected(nodes, include: Sequence[str]):
    """The records of the chosen subtrees (all of them without --include)."""
    if not include:
        yield from nodes
        return
    patterns = Selection(list(include)).include
    for node in nodes:
        if any(p.selects(node.path) for p in patterns):
            yield node


def _without_chroot(url: str) -> str:
    parsed = parse_zk_url(url)
    if not parsed.chroot:
        return url
    base, sep, query = url.partition("?")
    return base[: len(base) - len(parsed.chroot)] + sep + query


class _Copy:
    """What a logical backup has copied: its records (written in large blocks), their
    digest, and per path what the convergence checks compare (mzxid, pzxid, aversion)
    with the node's hash, packed into 36 bytes (memory grows with the tree's paths:
    the checks must know every copied path)."""

    _STATE = struct.Struct("<qqiQQ")  # mzxid, pzxid, aversion, hash low and high 64 bits

    def __init__(self, out) -> None:
        self.index: dict[str, bytes] = {}
        self.digest = SetDigest()
        self._packer = RecordPacker()
        self._out = out
        self._parts: list[bytes] = []
        self._size = 0
        self._records = 0

    def state(self, path: str) -> tuple[int, int, int, int]:
        """(mzxid, pzxid, aversion, hash) recorded for a copied path."""
        mzxid, pzxid, aversion, low, high = self._STATE.unpack(self.index[path])
        return mzxid, pzxid, aversion, low | high << 64

    def node(self, path: str, data: bytes | None, acls: tuple, stat: tuple) -> None:
        """Append a node's state (a later record of a path replaces an earlier one)."""
        parts, h = self._packer.node(path, data, acls, stat)
        if path in self.index:
            self.digest.remove(self.state(path)[3])
        self.index[path] = self._STATE.pack(stat[1], stat[8], stat[6], h & _LOW64, h >> 64)
        self.digest.add(h)
        self._parts += parts
        self._size += 100 if data is None else 100 + len(data)
        self._records += 1
        if self._size >= WRITE_CHUNK:
            self.flush()

    def deleted(self, path: str) -> None:
        """Append a deletion record for a copied path that is gone."""
        self.digest.remove(self.state(path)[3])
        del self.index[path]
        self._parts += pack_parts(Znode(DELETED, path))
        self._records += 1

    def flush(self) -> None:
        if self._parts:
            self._out.write(b"".join(self._parts), self._records)
            self._parts, self._size, self._records = [], 0, 0


_LOW64 = (1 << 64) - 1


def _converge(zk, copy: _Copy, selection, skip_system, walk_started: int) -> dict[str, Any]:
    """Re-check every node's stat until a whole pass finds nothing changed.

    A node changed since it was read (data, ACL or children) is read again and its
    new state appended; a vanished node gets a deletion record.
    """
    if zk.current_zxid() == walk_started:
        # No transaction at all while we walked: the copy is the tree at that zxid.
        return {"kind": "snapshot", "zxid": walk_started, "passes": 0}
    last_clean: dict[str, Any] | None = None
    for passes in range(1, MAX_PASSES + 1):
        start = zk.current_zxid()
        changed, regrown, gone = [], [], []
        for path, stat in stat_pass(zk, copy.index):  # the index is not changed meanwhile
            if stat is None:
                gone.append(path)
                continue
            mzxid, pzxid, aversion, _ = copy.state(path)
            if stat[1] != mzxid or stat[6] != aversion:
                changed.append(path)
            if stat[8] != pzxid:
                regrown.append(path)
        end = zk.current_zxid()
        if not (changed or regrown or gone):
            if start == end:
                return {"kind": "snapshot", "zxid": start, "passes": passes}
            last_clean = {"kind": "converged", "zxid": start, "zxid_end": end, "passes": passes}
            continue
        last_clean = None
        for path in gone:
            if path in copy.index:
                copy.deleted(path)
        for node in read_nodes(zk, changed):
            copy.node(node.path, node.data, node.acls, node.stat)
        for path in regrown:
            _rescan_children(zk, path, copy, selection, skip_system)
    if last_clean:
        return last_clean
    return {"kind": "none", "zxid": zk.current_zxid(), "passes": MAX_PASSES}


def _rescan_children(zk, path, copy: _Copy, selection, skip_system) -> None:
    """A node's children changed: record its new state and every new descendant."""
    for node in walk(zk, [path], selection, skip_system, known=copy.index):
        if node.path == path or (node.path not in copy.index and not node.ephemeral_owner):
            copy.node(node.path, node.data, node.acls, node.stat)


def _clear(zk, root: str, keep_system: bool, include: Sequence[str] = ()) -> None:
    """Delete what an overwrite replaces: every subtree under `root`, or with --include
    only the subtrees the patterns select (the rest of the target stays as it is)."""
    patterns = Selection(list(include)).include
    pending = ["/"]
    while pending:
        path = pending.pop()
        target = root if path == "/" else _join(root, path)
        with contextlib.suppress(kz.NoNodeError):
            for child in zk.get_children(target):
                if keep_system and path == "/" and child == "zookeeper":
                    continue
                below = child_path(path, child)
                if not patterns or any(p.selects(below) for p in patterns):
                    with contextlib.suppress(kz.NoNodeError):
                        zk.delete(_join(root, below), recursive=True)
                elif any(p.may_select_below(below) for p in patterns):
                    pending.append(below)


def _join(root: str, path: str) -> str:
    """A backup-relative path under the target's root (its chroot or /)."""
    return path if root == "/" else (root if path == "/" else root + path)


def _current_zxid(zk) -> int:
    """The server's last zxid, as this session sees it after a sync."""
    zk.sync("/")
    zk.exists("/")
    return int(zk.last_zxid)


SYSTEM_OPTION = "include_system"


def _system_allowed(plan: RestorePlan) -> bool:
    return str(plan.options.get(SYSTEM_OPTION, "")).lower() in ("1", "true", "yes")


def _refuse_system(nodes, chroot: str, plan: RestorePlan):
    """The records, refusing any that would land in /zookeeper (ZooKeeper's own
    namespace) unless --option include_system=true asks for it."""
    allowed = chroot or _system_allowed(plan)
    for node in nodes:
        if not allowed and (node.path == "/zookeeper" or node.path.startswith("/zookeeper/")):
            raise BadInputError(
                f"the backup holds {node.path}, which would be written into ZooKeeper's system "
                "namespace /zookeeper; nothing was written. Restore under a chroot, leave it out "
                f"with --include, or allow it with --option {SYSTEM_OPTION}=true"
            )
        yield node


class _Loader:
    """Creates nodes in multi-op transactions (merge: pipelined creates that may exist).

    A node that exists already is the restore's own when it was created after
    `before_zxid` (an earlier attempt of a retried restore wrote it: it counts as done
    and gets the backup's content), else the target's: merge keeps it as it is (`kept`),
    the other modes refuse it.
    """

    def __init__(self, zk, chroot: str, merge: bool, before_zxid: int | None = None) -> None:
        self.zk, self.chroot, self.merge = zk, chroot, merge
        self.before_zxid = before_zxid
        self.created = 0
        self.kept: set[str] = set()  # nodes the target held before the restore
        self._present: set[str] = {"/"}
        if merge:
            self.kept.add("/")  # merge keeps what the target root holds
        self._txn = None
        self._txn_nodes: list[Znode] = []
        self._txn_bytes = 0
        self._pending: list = []

    def target(self, path: str) -> str:
        if path == "/":
            return self.chroot or "/"
        return self.chroot + path

    def apply(self, node: Znode) -> None:
        if node.kind == DELETED:
            self._delete(node.path)
            return
        if node.path in self._present:
            self._flush()
            if node.path in self.kept:
                return  # the target's own node: merge leaves it as it was
            self.zk.set(self.target(node.path), node.data)
            if node.path == "/":
                self.created += 1  # the root exists already; its content is restored
            return
        self._ensure_parent(node.path)
        self._present.add(node.path)
        if self.merge:
            self._pending.append(
                (node, self.zk.create_async(self.target(node.path), node.data, acl=OPEN_ACL_UNSAFE))
            )
            if len(self._pending) >= WINDOW:
                self._drain()
            return
        if node.data is None:
            # kazoo's transactions take bytes only: a null-data node is created alone.
            self._flush()
            self._create_one(node)
            return
        size = len(node.data) + len(node.path) + 64
        if self._txn is not None and (
            len(self._txn_nodes) >= BATCH_OPS or self._txn_bytes + size > BATCH_BYTES
        ):
            self._flush()
        if self._txn is None:
            self._txn = self.zk.transaction()
        self._txn.create(self.target(node.path), node.data, acl=OPEN_ACL_UNSAFE)
        self._txn_nodes.append(node)
        self._txn_bytes += size

    def _delete(self, path: str) -> None:
        """A later record says the node was deleted during the backup. Merge removes it
        only if this restore created it."""
        self._flush()
        if path != "/" and not (self.merge and path in self.kept):
            with contextlib.suppress(kz.NoNodeError):
                self.zk.delete(self.target(path), recursive=True)
        if path != "/":
            self._forget(path)

    def _ensure_parent(self, path: str) -> None:
        parent = path.rsplit("/", 1)[0] or "/"
        if parent in self._present:
            return
        self._flush()
        missing = []
        while parent not in self._present:
            missing.append(parent)
            parent = parent.rsplit("/", 1)[0] or "/"
        for ancestor in reversed(missing):  # top down
            self._create_one(Znode(NODE, ancestor, b""), counted=False)
            self._present.add(ancestor)

    def _create_one(self, node: Znode, counted: bool = True) -> None:
        try:
            self.zk.create(self.target(node.path), node.data, acl=OPEN_ACL_UNSAFE)
        except kz.NodeExistsError:
            self._exists(node, self.zk.exists(self.target(node.path)), counted)
            return
        except kz.ZookeeperError as exc:
            raise explain(exc, node.path) from None
        self.created += counted

    def _exists(self, node: Znode, stat, counted: bool) -> None:
        """A create found the node there: the restore's own from an earlier attempt, or
        the target's."""
        if stat is not None and self._ours(stat):
            if counted:
                self.zk.set(self.target(node.path), node.data)  # the backup's content
                self.created += 1
            return
        if self.merge or not counted:
            self.kept.add(node.path)  # a parent made by ensure_path is only a parent
            return
        raise PermanentError(
            f"node {node.path} of the backup already exists in the target (it was created "
            "there during the restore, by someone else)"
        )

    def _ours(self, stat) -> bool:
        return self.before_zxid is not None and stat.czxid > self.before_zxid

    def _forget(self, path: str) -> None:
        prefix = path.rstrip("/") + "/"
        self._present = {p for p in self._present if p != path and not p.startswith(prefix)}
        self.kept = {p for p in self.kept if p != path and not p.startswith(prefix)}
        self._present.add("/")

    def _flush(self) -> None:
        self._drain()
        if self._txn is None:
            return
        nodes, txn = self._txn_nodes, self._txn
        self._txn, self._txn_nodes, self._txn_bytes = None, [], 0
        results = txn.commit()
        failures = [r for r in results if isinstance(r, Exception)]
        if not failures:
            self.created += len(nodes)
            return
        first = next((r for r in failures if not isinstance(r, kz.RolledBackError)), failures[0])
        if not isinstance(first, kz.NodeExistsError):
            raise explain(first)
        # Nothing of the batch was applied: one by one, an earlier attempt's nodes
        # count as done (a retried restore re-runs its batches).
        for node in nodes:
            self._create_one(node)

    def _drain(self) -> None:
        existing = []
        for node, result in self._pending:
            try:
                result.get()
                self.created += 1
            except kz.NodeExistsError:
                existing.append((node, self.zk.exists_async(self.target(node.path))))
            except kz.ZookeeperError as exc:
                raise explain(exc, node.path) from None
        self._pending = []
        for node, stat in existing:
            self._exists(node, stat.get(), counted=True)

    def finish(self) -> None:
        self._flush()


def _final_acls(nodes) -> dict[str, tuple]:
    """Path -> recorded ACL, for nodes whose ACL is not the open default (the last record
    of a path wins; deleted paths drop out)."""
    final: dict[str, tuple] = {}
    for node in nodes:
        if node.kind == DELETED or node.acls == _OPEN_ACL:
            final.pop(node.path, None)
        else:
            final[node.path] = node.acls
    return final


def _apply_acls(zk, chroot: str, acls: dict[str, tuple], skipped: set[str]) -> None:
    """Set the recorded ACLs (merge leaves nodes it skipped as they were), pipelined."""
    inflight = []
    for path, recorded in acls.items():
        if path in skipped:
            continue
        target = (chroot or "/") if path == "/" else chroot + path
        acl_list = [ACL(perms, Id(scheme, ident)) for perms, scheme, ident in recorded]
        inflight.append((path, zk.set_acls_async(target, acl_list)))
        if len(inflight) >= WINDOW:
            _wait_all(inflight)
            inflight = []
    _wait_all(inflight)


def _wait_all(inflight) -> None:
    for path, result in inflight:
        try:
            result.get()
        except kz.ZookeeperError as exc:
            raise explain(exc, path) from None


def _final_hashes(nodes) -> dict[str, int]:
    final: dict[str, int] = {}
    for node in nodes:
        if node.kind == DELETED:
            final.pop(node.path, None)
        else:
            final[node.path] = node_hash(node.path, node.data, node.acls)
    return final


class _TargetTally:
    """What one walk of a restored target says against the backup: the digest of the
    whole tree, or (merge, --include: `expected` given) each backed-up node compared, a
    node created at or before `kept_before` (merge: the target's own) counting as equal
    whatever it holds."""

    def __init__(self, expected: dict[str, int] | None, kept_before: int | None) -> None:
        self.expected, self.kept_before = expected, kept_before
        self.digest = SetDigest()
        self.found = self.differing = self.missing = 0
        self._seen: set[str] = set()

    def paths(self, nodes: Iterator[Znode]) -> Iterator[str]:
        """The walked nodes' paths for the quality suite, each node tallied as it passes
        (ephemeral nodes are no part of a backup, nor of its quality suite)."""
        for node in nodes:
            if self.expected is None:
                if not node.ephemeral_owner:
                    self.digest.add(node_hash(node.path, node.data, node.acls))
            elif node.path in self.expected:
                self._seen.add(node.path)
                self._compare(node)
            if not node.ephemeral_owner:
                yield node.path

    def read_unwalked(self, zk) -> None:
        """Backed-up nodes the walk did not reach (e.g. a /zookeeper restored with
        include_system) are read one by one, as they were before the walk served both."""
        if self.expected is None:
            return
        unwalked = {p: h for p, h in self.expected.items() if p not in self._seen}
        found, differing, self.missing = _compare_present(zk, unwalked, self.kept_before)
        self.found += found
        self.differing += differing

    def _compare(self, node: Znode) -> None:
        assert self.expected is not None
        kept = self.kept_before is not None and node.stat[0] <= self.kept_before
        if kept or node_hash(node.path, node.data, node.acls) == self.expected[node.path]:
            self.found += 1
        else:
            self.differing += 1

    def check(self, unit: StoredUnit) -> TargetCheck:
        if self.expected is None:
            problems = digest_problems(self.digest, unit.meta, "backup")
            return TargetCheck(
                unit=unit.name, ok=not problems, records=self.digest.count, problems=problems
            )
        problems = []
        if self.missing:
            problems.append(f"{self.missing} backed-up node(s) are missing from the target")
        if self.differing:
            problems.append(f"{self.differing} node(s) differ from the backup (data or ACL)")
        return TargetCheck(unit=unit.name, ok=not problems, records=self.found, problems=problems)


def _compare_present(
    zk, expected: dict[str, int], kept_before: int | None = None
) -> tuple[int, int, int]:
    """(equal, differing, missing) backed-up nodes; a node created at or before
    `kept_before` (merge: the target's own) counts as equal whatever it holds."""
    found = differing = 0
    seen = set()
    for node in read_nodes(zk, list(expected)):
        seen.add(node.path)
        kept = kept_before is not None and node.stat[0] <= kept_before
        if kept or node_hash(node.path, node.data, node.acls) == expected[node.path]:
            found += 1
        else:
            differing += 1
    return found, differing, len(expected) - len(seen)
