"""ZooKeeper under load: a chroot on one server, one writer per subtree adding znodes. The
check reads both trees and judges the target by the consistency kind the backup's walk
proved (benchmarks/load/technologies.py)."""

from __future__ import annotations

import contextlib
import random
from typing import Any

from benchmarks.load.technologies import Check, Target, Technology
from benchmarks.load.writers import Writer


def _walk(client: Any, root: str) -> dict[str, tuple[bytes, int]]:
    """Every node under root (root itself left out): relative path -> (data, czxid),
    read breadth-first with up to 256 requests in flight."""
    found: dict[str, tuple[bytes, int]] = {}
    level = [root]
    while level:
        paths = []
        for start in range(0, len(level), 256):
            chunk = level[start : start + 256]
            for parent, pending in [(p, client.get_children_async(p)) for p in chunk]:
                with contextlib.suppress(Exception):  # gone meanwhile: nothing below it
                    paths += [f"{parent.rstrip('/')}/{c}" for c in pending.get()]
        for start in range(0, len(paths), 256):
            chunk = paths[start : start + 256]
            for path, pending in [(p, client.get_async(p)) for p in chunk]:
                data, stat = pending.get()
                found[path[len(root) :]] = (data, stat.czxid)
        level = paths
    return found


class ZooKeeper(Technology):
    """A chroot on one ZooKeeper server: a small tree, and one writer per subtree adding
    znodes; each cycle restores into a new sibling chroot on the same server."""

    name = technology = "zookeeper"

    def __init__(self, *args: Any, hosts: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hosts = hosts
        self.base = f"/load-{self.run_id}"
        self.root = f"{self.base}/src"
        self.clients: list[Any] = []

    def _client(self) -> Any:
        from kazoo.client import KazooClient

        client = KazooClient(hosts=self.hosts, timeout=30)
        client.start(timeout=60)
        self.clients.append(client)
        return client

    def setup(self) -> None:
        client = self._client()
        self.admin = client
        rng = random.Random(self.run_id)
        client.ensure_path(self.root)
        pending = []
        for i in range(self.scale["znodes"]):
            group = f"{self.root}/app/g{i % 10}"
            if i < 10:
                client.ensure_path(group)
            data = f'{{"node": {i}, "text": "{"y" * rng.randint(0, 300)}"}}'.encode()
            pending.append(client.create_async(f"{group}/n{i:05d}", data))
        for p in pending:
            p.get()
        self.writers = [self._writer(k) for k in range(self.scale["writers"])]

    def _writer(self, index: int) -> Writer:
        client = self._client()
        parent = f"{self.root}/w{index}"
        client.ensure_path(parent)
        counter = iter(range(10**9))
        rng = random.Random(index)

        def op() -> list[Any]:
            seq = next(counter)
            path = f"{parent}/n{seq:07d}"
            client.create(path, f"{index}:{seq}:{'z' * rng.randint(10, 200)}".encode())
            return [path[len(self.root) :]]

        return Writer(f"{self.name}-{index}", op, self.rate)

    def sources(self) -> list[str]:
        return [f"zk://{self.hosts}{self.root}"]

    def new_target(self, cycle: int) -> Target:
        chroot = f"{self.base}/c{cycle}"
        return Target([f"zk://{self.hosts}{chroot}"], place=chroot)

    def check(self, target: Target, manifest: dict, backup_started: float) -> Check:
        consistency = manifest["consistency"]
        kind, point = consistency["kind"], consistency["point"]
        source = _walk(self.admin, self.root)
        restored = _walk(self.admin, target.place)
        problems = []
        extra = sorted(p for p in restored if p not in source)
        differing = sorted(p for p in restored if p in source and restored[p][0] != source[p][0])
        if extra:
            problems.append(f"{len(extra)} restored znodes not in the source: {extra[:5]}")
        if differing:
            problems.append(f"{len(differing)} restored znodes differ: {differing[:5]}")
        if kind in ("snapshot", "converged"):
            low = point["zxid"]
            high = point.get("zxid_end", low)
            must = {p for p, (_, czxid) in source.items() if czxid <= low}
            may = {p for p, (_, czxid) in source.items() if czxid <= high}
            missing = sorted(must - set(restored))
            newer = sorted(set(restored) - may - set(extra))
            if missing:
                problems.append(
                    f"{kind} at zxid {hex(low)}: {len(missing)} znodes created by then are "
                    f"missing: {missing[:5]}"
                )
            if newer:
                problems.append(
                    f"{kind} up to zxid {hex(high)}: {len(newer)} znodes created later were "
                    f"restored: {newer[:5]}"
                )
        # Whatever the kind: what the writers had acknowledged before the run started.
        must = self.acked_before(backup_started) | {
            p for p in source if p.startswith("/app") or p.count("/") == 1
        }
        missing = sorted(must - set(restored))
        if missing:
            problems.append(
                f"{len(missing)} znodes acknowledged before the backup started are missing: "
                f"{missing[:5]}"
            )
        return Check(
            problems,
            {"znodes_compared": len(restored), "source_znodes_now": len(source), "kind": kind},
        )

    def drop_target(self, target: Target) -> None:
        with contextlib.suppress(Exception):
            self.admin.delete(target.place, recursive=True)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.admin.delete(self.base, recursive=True)
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.stop()
                client.close()
