"""Keeping credentials out of everything backstop prints, logs or stores.

Two mechanisms: URLs are shown with their password replaced (`redact_url`), and
every secret value that backstop resolves is registered so that any later text
(an error from a client library, a log line) has it masked (`mask_secrets`), the
way CI systems mask their secrets.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()

# user:password@ in any scheme://user:password@host form, including SQLAlchemy's.
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@"
)
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:password|passwd|pwd|secret|token|access_key|secret_key|authSource_password)=)"
    r"(?P<val>[^&#\s]*)",
    re.IGNORECASE,
)
# ${env:NAME} and ${secret:block-name} placeholders resolved at connect time.
_PLACEHOLDER = re.compile(r"\$\{(?P<kind>env|secret):(?P<name>[A-Za-z0-9_.\-/]+)\}")


def register_secret(value: str | None) -> None:
    """Remember a secret so that `mask_secrets` hides it from then on."""
    if value and len(value) >= 3:
        with _lock:
            _secrets.add(value)


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
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", text)


def url_password(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return parts.password


def resolve_placeholders(url: str, secret_loader=None) -> str:
    """Expand ${env:NAME} / ${secret:NAME} in a URL, registering each value as secret.

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
    register_secret(url_password(resolved))
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
