"""The error vocabulary every layer shares.

A driver turns whatever its client library raises into one of these, so that the
tasks above it can decide to retry (transient) or fail now (permanent) without
knowing the technology, and the CLI can map them onto exit codes.
"""

from __future__ import annotations

from enum import StrEnum

from backstop.drivers.redact import mask_secrets


class ErrorKind(StrEnum):
    TRANSIENT = "transient"  # worth retrying: the same call may succeed later
    PERMANENT = "permanent"  # retrying cannot help: fail now with the reason
    BAD_INPUT = "bad_input"  # the request itself is wrong: exit code 2


class BackstopError(Exception):
    """Base of every error backstop raises on purpose. Messages are secret-masked."""

    kind: ErrorKind = ErrorKind.PERMANENT
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(mask_secrets(message))

    @property
    def message(self) -> str:
        return str(self)


class TransientError(BackstopError):
    kind = ErrorKind.TRANSIENT


class PermanentError(BackstopError):
    kind = ErrorKind.PERMANENT


class BadInputError(BackstopError):
    """Bad usage or bad input: unknown technology, malformed URL, refused target."""

    kind = ErrorKind.BAD_INPUT
    exit_code = 2


class UnknownTechnologyError(BadInputError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown technology {name!r}; known technologies: {', '.join(sorted(known))}"
        )


class IntegrityError(PermanentError):
    """A stored file does not match its manifest (size, checksum, decoding)."""


def is_transient(exc: BaseException | None) -> bool:
    return isinstance(exc, TransientError)


class QualityError(PermanentError):
    """Data that breaks its technology's data-quality suite (the bytes are intact)."""
