"""The `backstop` command's argument parser: its subcommands, flags and help."""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

TECH_HELP = "zookeeper, docstore or schemaless"
TECH_BY_ID_HELP = TECH_HELP + "; may be left out with --backup ID (the store knows it)"


class _Parser(argparse.ArgumentParser):
    """argparse's own usage errors (an unknown flag, a missing argument) still exit 2;
    with --json on the command line they are one JSON object on stdout, like every other
    error. Subcommand parsers are of this class too (argparse makes them of the parent's)."""

    _json_requested = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        argv = sys.argv[1:] if args is None else list(args)
        self._json_requested = "--json" in argv
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        if not self._json_requested:
            super().error(message)
        error = f"{self.prog}: {message}"
        print(json.dumps({"status": "failed", "error": error, "exit_code": 2}))
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="backstop",
        description="Backup and restore of ZooKeeper, Docstore and Schemaless as Prefect flows.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's INFO logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        return sub

    def store_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--store", required=True, help="store URL or path (file://, s3://, ...)")
        sub.add_argument(
            "--store-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="fsspec filesystem option, e.g. endpoint_url=http://127.0.0.1:9000",
        )

    def key_args(sub: argparse.ArgumentParser, *, write: bool, read: bool) -> None:
        """Encryption (docs/security.md): public keys to write with, an identity to read."""
        if write:
            sub.add_argument(
                "--recipient",
                action="append",
                default=[],
                metavar="AGE1...",
                help="encrypt the backup's files to this age public key (repeatable; add an "
                "offline recovery key as a second recipient)",
            )
            sub.add_argument(
                "--recipients-file",
                metavar="FILE",
                help="encrypt to every age public key in FILE (one per line, # comments)",
            )
            sub.add_argument(
                "--signing-key",
                metavar="FILE",
                help="Ed25519 private key (PEM; backstop keys generate) that signs the "
                "manifests written, or a ${secret:BLOCK} reference to one",
            )
        if read:
            sub.add_argument(
                "--identity",
                metavar="FILE",
                help="age identity file (age-keygen) that decrypts an encrypted backup, or a "
                "${secret:BLOCK} reference to one",
            )
            sub.add_argument(
                "--verify-key",
                metavar="KEY",
                help="Ed25519 public key (a PEM file, its ed25519:... line, or a reference): "
                "refuse manifests it did not sign",
            )

    def limit_args(sub: argparse.ArgumentParser, *, upload: bool, download: bool) -> None:
        """Bandwidth limits of the store's data streams (docs/operations.md)."""
        shared = "MB = 10^6 bytes; one limit for all parallel streams of the process together"
        if upload:
            sub.add_argument(
                "--limit-upload",
                metavar="MB/S",
                help=f"write the backup's files to the store at most this fast ({shared})",
            )
        if download:
            sub.add_argument(
                "--limit-download",
                metavar="MB/S",
                help=f"read the backup's files from the store at most this fast ({shared})",
            )

    def runner_args(sub: argparse.ArgumentParser) -> None:
        """Where the units (shards) run: this process's threads, or Dask (docs/scale.md)."""
        sub.add_argument(
            "--runner",
            choices=("threads", "dask"),
            help="run the units on this process's threads (default) or on Dask workers "
            "(prefect-dask; a temporary LocalCluster unless --dask-address)",
        )
        sub.add_argument(
            "--dask-address", metavar="ADDR", help="a Dask scheduler, e.g. tcp://10.0.0.5:8786"
        )

    def source_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--source",
            action="append",
            required=True,
            metavar="URL",
            help="source URL; one per shard",
        )

    def source_filter_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--source",
            action="append",
            default=[],
            metavar="URL",
            help="latest means the newest backup of these sources (as backed up; "
            "repeatable); needed when the store holds backups of several sources",
        )

    sub = command("backup", "back up a source into a store")
    sub.add_argument("technology", metavar="TECH", help=TECH_HELP)
    source_args(sub)
    store_args(sub)
    key_args(sub, write=True, read=True)  # read: an incremental's encrypted, signed parent
    limit_args(sub, upload=True, download=True)  # download: the read-back of its files
    runner_args(sub)
    sub.add_argument("--incremental", action="store_true")
    sub.add_argument(
        "--resume",
        metavar="ID",
        help="finish a failed backup: keep the shards it stored, take the others (give the "
        "same sources, options and keys; schemaless)",
    )
    sub.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="back up only these parts (zookeeper: subtree patterns like /app/*)",
    )
    sub.add_argument(
        "--exclude", action="append", default=[], metavar="PATTERN", help="leave these parts out"
    )
    sub.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="driver option, e.g. tables=cells",
    )

    sub = command("restore", "restore a backup into targets, then verify them")
    sub.add_argument("technology", metavar="TECH", nargs="?", help=TECH_BY_ID_HELP)
    store_args(sub)
    runner_args(sub)
    key_args(sub, write=True, read=True)
    limit_args(sub, upload=True, download=True)  # an overwrite's safety backup uploads
    sub.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="URL",
        help="target URL; one per shard, in the backup's order",
    )
    sub.add_argument("--backup", default="latest", metavar="ID", help="backup id or latest")
    source_filter_args(sub)
    sub.add_argument(
        "--mode", default="fail-if-exists", choices=["fail-if-exists", "overwrite", "merge"]
    )
    sub.add_argument("--include", action="append", default=[], metavar="PATTERN")
    sub.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="FROM=TO",
        help="restore under another name (Docstore: shop=shop_copy, shop.*=archive.*)",
    )
    sub.add_argument("--until", metavar="POINT")
    sub.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="driver option, e.g. ignore_extra_columns=true",
    )
    sub.add_argument(
        "--dry-run",
        action="store_true",
        help="verify the backup and check the targets; write nothing",
    )
    sub.add_argument(
        "--force",
        action="store_true",
        help="restore a backup whose data-quality checks failed at backup time",
    )
    sub.add_argument(
        "--no-safety-backup",
        dest="safety_backup",
        action="store_false",
        help="with --mode overwrite: skip backing up the targets first (no rollback)",
    )

    sub = command("verify", "recompute every checksum of backups in a store")
    store_args(sub)
    key_args(sub, write=False, read=True)
    limit_args(sub, upload=False, download=True)
    sub.add_argument("--technology", metavar="TECH")
    sub.add_argument("--backup", metavar="ID", help="backup id or latest (default: all)")
    source_filter_args(sub)

    sub = command("list", "list the complete backups in a store")
    store_args(sub)
    key_args(sub, write=False, read=True)
    sub.add_argument("--technology", metavar="TECH")

    sub = command("drill", "back up, restore into a scratch target and verify: a restore test")
    sub.add_argument("technology", metavar="TECH", help=TECH_HELP)
    source_args(sub)
    sub.add_argument(
        "--scratch",
        action="append",
        required=True,
        metavar="URL",
        help="throwaway target, overwritten; one per shard",
    )
    store_args(sub)
    key_args(sub, write=True, read=True)
    limit_args(sub, upload=True, download=True)
    runner_args(sub)
    sub.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")

    sub = command("status", "the newest backup of each source: its age, size and state")
    store_args(sub)
    key_args(sub, write=False, read=True)
    sub.add_argument("--technology", metavar="TECH")
    sub.add_argument(
        "--stale-hours",
        type=float,
        default=26.0,
        metavar="H",
        help="a source whose newest backup is older than this is stale (default 26)",
    )

    sub = command("prune", "delete the backups a retention policy no longer keeps")
    store_args(sub)
    key_args(sub, write=False, read=True)  # --verify-key: only signed backups count as kept
    sub.add_argument("--keep-last", type=int, metavar="N", help="newest N backups per source")
    sub.add_argument("--keep-days", type=float, metavar="D", help="backups finished within D days")
    sub.add_argument(
        "--grace-hours",
        type=float,
        default=24.0,
        metavar="H",
        help="incomplete backups younger than this are left alone (default 24)",
    )
    sub.add_argument("--technology", metavar="TECH")
    sub.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")

    sub = command("export", "write a backup's files, decompressed and checked, into a folder")
    sub.add_argument("technology", metavar="TECH", nargs="?", help=TECH_BY_ID_HELP)
    store_args(sub)
    key_args(sub, write=False, read=True)
    limit_args(sub, upload=False, download=True)
    sub.add_argument("--backup", default="latest", metavar="ID", help="backup id or latest")
    source_filter_args(sub)
    sub.add_argument("--dir", required=True, help="an empty or new local folder")

    sub = command(
        "rekey", "re-encrypt stored backups to new recipients (key rotation; docs/security.md)"
    )
    store_args(sub)
    key_args(sub, write=True, read=True)
    sub.add_argument("--technology", metavar="TECH")
    sub.add_argument("--backup", metavar="ID", help="one backup (default: every encrypted one)")

    sub = command("metrics", "print or serve Prometheus metrics of what a store holds")
    store_args(sub)
    where = sub.add_mutually_exclusive_group()
    where.add_argument(
        "--output",
        metavar="FILE",
        help="write the text exposition to FILE atomically (node_exporter's textfile "
        "collector, e.g. /var/lib/prometheus/node-exporter/backstop.prom)",
    )
    where.add_argument("--listen", metavar="HOST:PORT", help="serve /metrics there until stopped")

    sub = command("demo", "back up, restore and compare a generated Schemaless datastore")
    sub.add_argument("--cells", type=int, default=100_000, help="cells in total (default 100000)")
    sub.add_argument("--shards", type=int, default=2)
    sub.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir)")

    # No --json here: a sub-subparser's defaults would overwrite it; init takes it.
    help_text = "write the deployment templates to edit and `prefect deploy`"
    sub = commands.add_parser("deployments", help=help_text, description=help_text)
    actions = sub.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="write prefect.yaml, automations.yaml and .env.example into DIR",
        description="write prefect.yaml, automations.yaml and .env.example into DIR",
    )
    init.add_argument("dir", metavar="DIR", help="folder to write them in (made if missing)")
    init.add_argument("--force", action="store_true", help="overwrite files already there")
    init.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    help_text = "make the keys of an encrypted, signed store (docs/security.md)"
    sub = commands.add_parser("keys", help=help_text, description=help_text)
    actions = sub.add_subparsers(dest="action", required=True, metavar="ACTION")
    generate = actions.add_parser(
        "generate",
        help="write an age identity and recipient, and an Ed25519 signing and verify key, "
        "into DIR (never over existing keys)",
        description="write age-identity.txt, age-recipient.txt, signing-key.pem and "
        "verify-key.pem into DIR (made if missing, 0700; private files 0600)",
    )
    generate.add_argument("dir", metavar="DIR", help="folder to write them in")
    generate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser
