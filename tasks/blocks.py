"""Prefect blocks: where backups live (`BackstopStore`) and how a source or target is
reached (`BackstopConnection`), their credentials kept as `SecretStr`.

    prefect block register -m backstop.tasks.blocks

registers both; they then appear on the Prefect UI's Blocks page. A flow parameter or
a command-line URL names a saved block as `block:NAME` wherever a URL goes
(`--store block:backups`, `--source block:orders-1`, a deployment's `sources`). Only
the name travels in flow parameters: the block is loaded where a connection is made
(tasks/secrets.py resolve_url, tasks/store.py StoreSpec.open), and every secret it
holds is registered for masking (drivers/redact.py) as it is loaded. The manifest
records the block's URL redacted (`shown_url`), never its password.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

from backstop.drivers.errors import BadInputError
from backstop.drivers.redact import MASK, literal_option_secrets, literal_url_secrets, redact_url
from backstop.drivers.redact import register_secret as _register


class BackstopConnection(Block):
    """A source or target: a zk://, mongodb:// or SQLAlchemy URL naming its user but
    not its password, and the password itself as a secret."""

    # A refused value may be a secret: validation errors do not repeat it.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "Backstop Connection"
    _block_type_slug = "backstop-connection"
    _description = (
        "Where backstop backs up from or restores into: a zk://, mongodb:// or SQLAlchemy "
        "URL without its password, and the password as a secret. Name it in a flow "
        "parameter or on the command line as block:NAME."
    )

    url: str = Field(
        description="The URL with the user name but without the password, e.g. "
        "postgresql+psycopg://backup@db1:5432/cells, mongodb://backup@db1:27017/, "
        "zk://backup@zk1:2181,zk2:2181/app"
    )
    password: SecretStr | None = Field(
        default=None, description="The password of the URL's user (none: the URL's as it is)"
    )

    @field_validator("url")
    @classmethod
    def _no_secret_in_url(cls, url: str) -> str:
        return _refuse_secret_in_url(url)

    def connection_url(self) -> str:
        """The URL with the password in its place (percent-encoded), registered for
        masking: for the process that connects, and nothing else."""
        if self.password is None:
            return self.url
        password = self.password.get_secret_value()
        _register(password)
        return _with_password(self.url, quote(password, safe=""))

    def shown_url(self) -> str:
        """The URL as manifests, logs and artifacts show it: its password as ***, the
        same text a URL with an inline password redacts to."""
        if self.password is None:
            return redact_url(self.url)
        return redact_url(_with_password(self.url, MASK))


class BackstopStore(Block):
    """Where backups live: an fsspec URL or local path, its filesystem options, and
    the credentials as secrets (s3fs's names: key, secret, token)."""

    # A refused value may be a secret: validation errors do not repeat it.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "Backstop Store"
    _block_type_slug = "backstop-store"
    _description = (
        "Where backstop keeps its backups: an fsspec URL (s3://bucket/prefix, "
        "file:///srv/backups, ...), filesystem options, and the credentials as secrets. "
        "Name it in a flow parameter or on the command line as block:NAME."
    )

    url: str = Field(description="s3://BUCKET/PREFIX, file:///path/to/folder, ...")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec filesystem options without secrets, e.g. "
        '{"endpoint_url": "https://s3.eu-west-1.amazonaws.com"}',
    )
    key: SecretStr | None = Field(default=None, description="access key id (s3fs key)")
    secret: SecretStr | None = Field(default=None, description="secret access key")
    token: SecretStr | None = Field(default=None, description="session token, if any")

    @field_validator("url")
    @classmethod
    def _no_secret_in_url(cls, url: str) -> str:
        return _refuse_secret_in_url(url)

    @field_validator("options")
    @classmethod
    def _no_secret_in_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        found = literal_option_secrets(options)
        if found:
            raise ValueError(
                f"options {', '.join(found)} hold secrets: use the key, secret and token "
                "fields, or a ${secret:BLOCK} reference"
            )
        return options

    def filesystem_options(self) -> dict[str, Any]:
        """The options with the credentials added, registered for masking."""
        options = dict(self.options)
        for name in ("key", "secret", "token"):
            value: SecretStr | None = getattr(self, name)
            if value is not None:
                options[name] = value.get_secret_value()
                _register(options[name])
        return options


def _refuse_secret_in_url(url: str) -> str:
    """A block's URL holds no secret in plain text: the secret fields are for that. Nor
    is it a block:NAME: blocks do not chain (a store's would load a connection block)."""
    if url.startswith("block:"):
        raise ValueError(f"{url!r} names a block: give the block the URL itself")
    found = literal_url_secrets(url)
    if found:
        raise ValueError(
            f"{redact_url(url)!r} holds {', '.join(found)}: put the password in the block's "
            "password field (a store's credentials in key, secret, token), stored as secrets"
        )
    return url


def _with_password(url: str, password: str) -> str:
    """`scheme://user@hosts/...` with `user:password@`; a URL naming no user has no
    place for a password (bad input, said without the password)."""
    scheme, sep, rest = url.partition("://")
    cut = min([i for i in (rest.find(c) for c in "/?#") if i != -1] or [len(rest)])
    user, at, hosts = rest[:cut].rpartition("@")
    if not sep or not at or not user:
        raise BadInputError(
            f"{redact_url(url)!r} names no user for the block's password: write the user "
            "into the URL (scheme://USER@host/...)"
        )
    return f"{scheme}://{user}:{password}@{hosts}{rest[cut:]}"


def _load(kind: type[Block], name: str) -> Any:
    """A saved block of this kind; a name Prefect does not know is bad input (exit 2)."""
    try:
        return kind.load(name, validate=True)
    except ValueError as exc:
        if "Unable to find block document" not in str(exc) and "not found" not in str(exc):
            raise
        raise BadInputError(
            f"block:{name}: no {kind.get_block_type_slug()} block named {name!r} in Prefect "
            "(`prefect block ls` lists them; the types are registered with `prefect block "
            "register -m backstop.tasks.blocks`)"
        ) from None


def load_connection(name: str) -> BackstopConnection:
    return _load(BackstopConnection, name)


def load_store(name: str) -> BackstopStore:
    return _load(BackstopStore, name)
