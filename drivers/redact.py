"""Keeping credentials out of everything backstop prints, logs or stores.

Two mechanisms: URLs are shown with their password replaced (`redact_url`), and
every secret value that backstop resolves is registered so that any later text
(an error from a client library, a log line) has it masked (`mask_secrets`), the
way CI systems mask their secrets.

A third keeps secrets out of what Prefect stores (flow-run parameters): a secret
travels as a `${env:NAME}` or `${secret:BLOCK}` reference, resolved only where a
connection is made. `literal_url_secrets`/`literal_option_secrets` find secrets
written in plain text (the flows refuse them); `stash_url_secrets`/
`stash_option_secrets` move them into this process's environment and leave
references in their place (what the CLI does before it starts a flow).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

if TYPE_CHECKING:  # errors.py imports this module
    from backstop.drivers.errors import BadInputError

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()

# user:password@ in any scheme://user:password@host form, including SQLAlchemy's. The
# password runs to the authority's LAST "@" (urllib's rpartition): a raw "@" in it is
# masked whole, never its tail shown (such a URL is refused as input: check_userinfo).
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/?#@\s]*):(?P<pw>[^/?#\s]*)@"
)
# scheme://authority, the authority up to the first / ? or # (where every parser ends it).
_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://(?P<authority>[^/?#]*)")
# name=value in a query; the value is a secret when the name says so (is_secret_name).
_QUERY_PARAM = re.compile(r"(?P<key>[?&](?P<name>[A-Za-z0-9_.%\-]+)=)(?P<val>[^&#\s]*)")
# ${env:NAME} and ${secret:block-name} placeholders resolved at connect time.
_PLACEHOLDER = re.compile(r"\$\{(?P<kind>env|secret):(?P<name>[A-Za-z0-9_.\-/]+)\}")


def register_secret(value: str | None) -> None:
    """Remember a secret so that `mask_secrets` hides it from then on."""
    if value and len(value) >= 3:
        with _lock:
            _secrets.add(value)
            # A URL carries it percent-encoded; a client's error message may show it decoded.
            if len(unquote(value)) >= 3:
                _secrets.add(unquote(value))


def mask_secrets(text: str) -> str:
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return redact_url(text)


def redact_url(url: str) -> str:
    """The text with every URL password (inline or in the query) replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", url)
    return _QUERY_PARAM.sub(
        lambda m: f"{m['key']}{MASK}" if is_secret_name(unquote(m["name"])) else m[0], text
    )


def check_userinfo(url: str) -> None:
    """Refuse (BadInputError) a URL whose user name or password holds a raw "@" or
    whitespace. Client libraries split such a URL differently (SQLAlchemy at the first
    "@", urllib and PyMongo at the last), so part of the password could be taken for
    the host, and redacted or stashed apart from the rest; percent-encoded it is one."""
    text = _PLACEHOLDER.sub(lambda m: "x" * len(m[0]), url)  # a reference is one token
    match = _AUTHORITY.match(text)
    if match is None:
        return
    userinfo, at, _host = match["authority"].rpartition("@")
    if at and ("@" in userinfo or any(c.isspace() for c in userinfo)):
        from backstop.drivers.errors import BadInputError

        # Shown with the whole user:password masked: redact_url cannot tell where a
        # password with a space in it ends.
        start, end = match.start("authority"), match.start("authority") + len(userinfo)
        shown = redact_url(f"{url[:start]}{MASK}{url[end:]}")
        raise BadInputError(
            f"{shown!r}: the user name or password holds a raw '@' or whitespace, "
            "which client libraries split differently; percent-encode it (@ as %40, a space "
            "as %20)"
        )


def url_password(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return parts.password


def resolve_placeholders(url: str, secret_loader=None) -> str:
    """Expand ${env:NAME} / ${secret:NAME} in a URL, registering the secrets for masking:
    every Secret block's value, and whatever lands in a secret-bearing place of the URL
    (its password, a secret query parameter). An ${env:} reference naming a host or a
    path is no secret: masking it would also hide it where places are told apart.

    `secret_loader` turns a Prefect Secret block name into its value; drivers do not
    import Prefect, so the tasks layer passes it in.
    """

    def expand(match: re.Match[str]) -> str:
        kind, name = match["kind"], match["name"]
        if kind == "env":
            value = os.environ.get(name)
            if value is None:
                from backstop.drivers.errors import BadInputError

                raise BadInputError(f"environment variable {name} (named in a URL) is not set")
        else:
            if secret_loader is None:
                from backstop.drivers.errors import BadInputError

                raise BadInputError(f"secret {name!r} cannot be resolved here")
            value = secret_loader(name)
            register_secret(value)
        return value

    resolved = _PLACEHOLDER.sub(expand, url)
    for _what, start, end in _secret_spans(resolved):
        register_secret(resolved[start:end])
    return resolved


def strip_url_password(url: str, env_name: str) -> str:
    """Move an inline password out of a URL into an environment variable.

    The returned URL carries a ${env:...} placeholder instead, so it can travel as
    a Prefect flow parameter without the secret being stored with the flow run.
    """
    parts = urlsplit(url)
    if not parts.password or _PLACEHOLDER.search(parts.password or ""):
        return url
    register_secret(parts.password)
    os.environ[env_name] = parts.password
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    netloc = f"{user}:${{env:{env_name}}}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# -- secrets written in plain text, and moving them out of what Prefect stores -------
# Words that make a parameter or option name a secret one: `password`, `sas_token`,
# `client_secret`, `tlsCertificateKeyFilePassword`, `Authorization`...
_SECRET_WORDS = frozenset(
    {
        "password", "passwd", "pwd", "pass", "secret", "secrets", "token", "passphrase",
        "credential", "credentials", "signature", "sig", "sas", "authorization", "apikey",
    }
)  # fmt: skip
# Whole names (lowercase, separators removed) that hold secrets without saying so.
_SECRET_NAMES = frozenset(
    {"key", "pkey", "sslpassword", "connectionstring", "authmechanismproperties"}
)
# "key" names a key's value (s3fs `key`, `account_key`, `aws_access_key_id`), unless
# it names a file holding one (`tlsCertificateKeyFile`, `ssl_key_path`).
_KEY_QUALIFIERS = frozenset({"file", "path", "filename", "name", "type", "size", "format"})
# Option values that are modes, not secrets (gcsfs `token="anon"` and its kin).
_NOT_SECRET_VALUES = frozenset({"", "anon", "google_default", "cloud", "browser", "cache"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def is_secret_name(name: str) -> bool:
    """Whether a query parameter or store option of this name holds a secret."""
    words = [w.lower() for w in re.split(r"[^A-Za-z0-9]+", _CAMEL.sub(" ", name)) if w]
    if "".join(words) in _SECRET_NAMES or any(w in _SECRET_WORDS for w in words):
        return True
    return any(
        w == "key" and (i + 1 == len(words) or words[i + 1] not in _KEY_QUALIFIERS)
        for i, w in enumerate(words)
    )


def is_reference(value: str) -> bool:
    """The whole value is one ${env:NAME} or ${secret:BLOCK} reference."""
    return _PLACEHOLDER.fullmatch(value) is not None


def _secret_spans(url: str) -> list[tuple[str, int, int]]:
    """(what, start, end) of every secret-bearing value in a URL's text: the password
    of `scheme://user:password@` and the values of secret query parameters."""
    # References may hold characters that delimit URL parts ("/" in a block name):
    # blank them out, keeping every offset.
    text = _PLACEHOLDER.sub(lambda m: "\x00" * len(m[0]), url)
    spans = []
    query_from = 0
    userinfo = _USERINFO.match(text)
    if userinfo and userinfo.start("pw") < userinfo.end("pw"):
        spans.append(("the password in user:password@", userinfo.start("pw"), userinfo.end("pw")))
    if userinfo:
        query_from = userinfo.end()
    question = text.find("?", query_from)
    if question != -1:
        for param in _QUERY_PARAM.finditer(text, question):
            if param["val"] and is_secret_name(unquote(param["name"])):
                what = f"query parameter {param['name']}="
                spans.append((what, param.start("val"), param.end("val")))
    return spans


def literal_url_secrets(url: str) -> list[str]:
    """What in this URL is a secret written in plain text (not a whole reference)."""
    check_userinfo(url)
    return [what for what, a, b in _secret_spans(url) if not is_reference(url[a:b])]


_stashed: dict[str, str] = {}  # secret value -> the environment variable holding it


def stash_in_environment(value: str) -> str:
    """Put a secret in this process's environment (only: children started later
    inherit it, nothing is written anywhere) and return a reference to it."""
    with _lock:
        name = _stashed.get(value)
        if name is None or os.environ.get(name) != value:
            n = len(_stashed)
            while f"BACKSTOP_SECRET_{n}" in os.environ:
                n += 1
            name = f"BACKSTOP_SECRET_{n}"
            os.environ[name] = value
            _stashed[value] = name
    register_secret(value)
    return f"${{env:{name}}}"


def _partial_reference(what: str, shown: str) -> BadInputError:
    from backstop.drivers.errors import BadInputError

    return BadInputError(
        f"{shown}: {what} mixes a reference with plain text; write the whole secret as one "
        "${env:NAME} or ${secret:BLOCK} reference"
    )


def stash_url_secrets(url: str, stash: Callable[[str], str] = stash_in_environment) -> str:
    """The URL with every plain-text secret replaced by the reference `stash` returns.

    The value moved is the URL's own text (still percent-encoded), so resolving the
    reference gives back exactly the URL that was given.
    """
    check_userinfo(url)
    for what, start, end in reversed(_secret_spans(url)):
        value = url[start:end]
        if is_reference(value):
            continue
        if _PLACEHOLDER.search(value):
            raise _partial_reference(what, redact_url(url))
        url = url[:start] + stash(value) + url[end:]
    return url


def _is_literal_secret(value: Any) -> bool:
    if isinstance(value, str):
        return value not in _NOT_SECRET_VALUES and not is_reference(value)
    return value is not None and not isinstance(value, bool)


def literal_option_secrets(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The options (dotted paths into nested ones, such as s3fs's client_kwargs) that
    hold a secret in plain text: secret-named values, and passwords inside URL values."""
    found = []
    for key, value in options.items():
        where = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found += literal_option_secrets(value, f"{where}.")
        elif is_secret_name(str(key)):
            if _is_literal_secret(value):
                found.append(where)
        elif isinstance(value, str) and literal_url_secrets(value):
            found.append(where)
    return found


def stash_option_secrets(
    options: Mapping[str, Any], stash: Callable[[str], str] = stash_in_environment
) -> dict[str, Any]:
    """The options with every plain-text secret replaced by the reference `stash` returns."""
    from backstop.drivers.errors import BadInputError

    hidden: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, Mapping):
            hidden[key] = stash_option_secrets(value, stash)
        elif is_secret_name(str(key)) and _is_literal_secret(value):
            if not isinstance(value, str):
                raise BadInputError(
                    f"store option {key} holds a secret that is not text; give it as a "
                    "${env:NAME} or ${secret:BLOCK} reference"
                )
            if _PLACEHOLDER.search(value):
                raise _partial_reference(f"store option {key}", key)
            hidden[key] = stash(value)
        elif isinstance(value, str):
            hidden[key] = stash_url_secrets(value, stash)
        else:
            hidden[key] = value
    return hidden


def resolve_option_placeholders(value: Any, secret_loader=None, secret: bool = False) -> Any:
    """Options (nested mappings and lists of them) with every reference resolved; the
    values of secret-named options are registered for masking."""
    if isinstance(value, str):
        resolved = resolve_placeholders(value, secret_loader) if "${" in value else value
        if secret:
            register_secret(resolved)
        return resolved
    if isinstance(value, Mapping):
        return {
            k: resolve_option_placeholders(v, secret_loader, is_secret_name(str(k)))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [resolve_option_placeholders(v, secret_loader, secret) for v in value]
    return value


class SecretMaskingFilter(logging.Filter):
    """A logging filter that masks registered secrets and URL passwords in records."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # Formatters use exc_text when it is set: mask the traceback once, here.
            record.exc_text = mask_secrets(logging.Formatter().formatException(record.exc_info))
        return True
