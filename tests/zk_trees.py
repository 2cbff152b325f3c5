"""Building and reading ZooKeeper trees for the tests."""

from __future__ import annotations

import random

from kazoo.client import KazooClient
from kazoo.security import ACL, OPEN_ACL_UNSAFE, Id, make_digest_acl

DIGEST_USER, DIGEST_PASSWORD = "backstop", "zk-Secret-9"
CUSTOM_ACL = [
    make_digest_acl(DIGEST_USER, DIGEST_PASSWORD, all=True),
    ACL(1, Id("world", "anyone")),
]


def authenticated_client(hosts: str) -> KazooClient:
    """A started client carrying the tests' digest credentials."""
    client = KazooClient(hosts=hosts, auth_data=[("digest", f"{DIGEST_USER}:{DIGEST_PASSWORD}")])
    client.start(timeout=30)
    return client


def build_tree(client: KazooClient, root: str, nodes: int = 10_000, seed: int = 3) -> None:
    """`nodes` znodes under root: varied depth, empty and binary data up to 1 MB, custom
    ACLs, sequential nodes, and one ephemeral node (which a backup must skip)."""
    rng = random.Random(seed)
    paths = [root]
    pending = []
    created = 0
    while created < nodes:
        parent = rng.choice(paths[-200:]) if rng.random() < 0.7 else rng.choice(paths)
        depth = parent.count("/")
        if depth > 12:
            parent = root
        name = f"n{created:05d}"
        path = f"{parent}/{name}"
        kind = rng.random()
        if kind < 0.2:
            data = b""
        elif kind < 0.5:
            data = rng.randbytes(rng.randint(1, 64))
        else:
            data = f'{{"node": {created}, "text": "{"x" * rng.randint(0, 200)}"}}'.encode()
        acl = CUSTOM_ACL if created % 97 == 0 else OPEN_ACL_UNSAFE
        pending.append(client.create_async(path, data, acl=acl))
        paths.append(path)
        created += 1
        if len(pending) >= 500:
            [p.get() for p in pending]
            pending = []
    [p.get() for p in pending]
    big = bytes(rng.getrandbits(8) for _ in range(1000)) * 1000  # 1,000,000 bytes
    client.create(f"{root}/big", big)
    client.create(f"{root}/queue")
    for _ in range(5):
        client.create(f"{root}/queue/item-", b"q", sequence=True)
    client.create(f"{root}/session-lock", b"mine", ephemeral=True)


def read_tree(client: KazooClient, root: str) -> dict[str, tuple[bytes, list]]:
    """path (relative to root) -> (data, sorted ACLs) for every persistent node.

    Requests go out a batch at a time (as build_tree writes): one round trip per node
    read one after another took minutes for 10,000 nodes on a loaded CI machine."""
    out = {}
    pending = [root]
    while pending:
        batch, pending = pending[:500], pending[500:]
        asked = [
            (p, client.get_async(p), client.get_acls_async(p), client.get_children_async(p))
            for p in batch
        ]
        for path, data_reply, acls_reply, children_reply in asked:
            data, stat = data_reply.get()
            acls, _ = acls_reply.get()
            children = children_reply.get()
            if stat.ephemeralOwner:
                continue
            relative = path if root == "/" else (path[len(root) :] or "/")
            out[relative] = (data, sorted((a.perms, a.id.scheme, a.id.id) for a in acls))
            pending.extend(f"{path}/{c}" if path != "/" else f"/{c}" for c in children)
    return out


def zk_backup(source: str, store, **options):
    """A ZooKeeper backup through the flow. The tests' URLs carry the digest password:
    moved out of the parameters first, as the CLI does."""
    from backstop.flows.backup import backup
    from backstop.flows.params import BackupRequest
    from backstop.tasks.secrets import hide_secrets

    return backup(
        request=hide_secrets(
            BackupRequest(technology="zookeeper", sources=[source], store=store, options=options)
        )
    )


def zk_restore(store, target: str, **kwargs):
    """A ZooKeeper restore through the flow (password moved out as in zk_backup)."""
    from backstop.flows.params import RestoreRequest
    from backstop.flows.restore import restore
    from backstop.tasks.secrets import hide_secrets

    return restore(
        request=hide_secrets(
            RestoreRequest(technology="zookeeper", store=store, targets=[target], **kwargs)
        )
    )
