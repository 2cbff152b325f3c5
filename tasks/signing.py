"""Signed manifests (Ed25519): a forger who rewrites a backup's data and fixes up the
sizes and hashes in its manifest is caught by the signature.

A backup host holds the signing key and signs the exact bytes of every manifest it
writes, in `manifest.sig` beside it (written before the manifest, which stays the last
file of a backup). A restore host holds the verify key: with it, `restore`, `verify`,
`export` and `drill` refuse a manifest that is unsigned, signed by another key, or
changed since it was signed. The manifest names every file's size and SHA-256 (and an
encrypted backup's sealed part, tasks/sealed.py), so the signature covers every byte.

Key files are PEM (PKCS#8 private, SubjectPublicKeyInfo public), as `openssl`
writes them; `backstop keys generate` makes a pair. The private key travels like an
age identity: a file's path or a `${secret:BLOCK}` / `${env:NAME}` reference, never
its text (Prefect stores a run's parameters). A verify key is public: also accepted
as its one-line form `ed25519:BASE64`, which `keys generate` prints.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backstop.drivers.errors import BadInputError, IntegrityError
from backstop.tasks import crypto

SIGNATURE_NAME = "manifest.sig"
ALGORITHM = "ed25519"
ONE_LINE_PREFIX = "ed25519:"
MAX_SIGNATURE_BYTES = 4096
_PRIVATE_MARK = "PRIVATE KEY"


@dataclass(frozen=True)
class VerifyKey:
    key: Ed25519PublicKey
    fingerprint: str


def fingerprint_of(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:16]


def verify_key_of(key: Ed25519PrivateKey) -> VerifyKey:
    public = key.public_key()
    return VerifyKey(key=public, fingerprint=fingerprint_of(public))


def one_line(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return ONE_LINE_PREFIX + base64.b64encode(raw).decode()


# -- keys ----------------------------------------------------------------------------------
def generate() -> tuple[str, str]:
    """A new key pair: (private PEM, public PEM)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


def refuse_literal_signing_key(reference: str | None) -> None:
    """A private key's text as a parameter would be stored by Prefect with the run."""
    if reference and _PRIVATE_MARK in reference.upper():
        raise BadInputError(
            "a signing key is given as a file or a ${secret:BLOCK} reference, never as "
            "its text (Prefect stores a run's parameters)"
        )


def _text_of(reference: str, what: str) -> tuple[str, str]:
    """(text, where) from a `${...}` reference or a file's path."""
    from backstop.tasks.secrets import resolve_url

    if "${" in reference:
        return resolve_url(reference), f"reference {reference}"
    path = Path(reference).expanduser()
    reference = str(path)
    try:
        return path.read_text(), f"file {crypto.shown_key_path(reference)}"
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(
            f"{what} file {crypto.shown_key_path(reference)} cannot be read: "
            f"{getattr(exc, 'strerror', None) or type(exc).__name__}"
        ) from None


def load_signing_key(reference: str) -> Ed25519PrivateKey:
    refuse_literal_signing_key(reference)
    text, where = _text_of(reference, "signing key")
    try:
        key = serialization.load_pem_private_key(text.strip().encode(), password=None)
    except (ValueError, TypeError):
        # Never the text itself: it may be a key with a typo.
        raise BadInputError(
            f"signing key {where} is not an unencrypted PEM private key "
            "(backstop keys generate writes one)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInputError(f"signing key {where} is not an Ed25519 key")
    return key


def load_verify_key_text(text: str) -> VerifyKey:
    return load_verify_key(text) if text.strip().startswith(ONE_LINE_PREFIX) else _verify_key_of(
        text.strip(), "given"
    )


def load_verify_key(reference: str) -> VerifyKey:
    """A verify key: its one-line form, a PEM public key file, or a reference to one."""
    text = reference.strip()
    if _PRIVATE_MARK in text.upper():
        raise BadInputError(
            "a private key was given where the verify key (public) belongs; "
            "the verify key is the .pub file `backstop keys generate` wrote"
        )
    if text.startswith(ONE_LINE_PREFIX):
        where = "given"
    else:
        text, where = _text_of(reference, "verify key")
        text = text.strip()
        if _PRIVATE_MARK in text.upper():
            raise BadInputError(
                f"verify key {where} holds a private key; give the public key instead"
            )
    return _verify_key_of(text, where)


def _verify_key_of(text: str, where: str) -> VerifyKey:
    try:
        if text.startswith(ONE_LINE_PREFIX):
            raw = base64.b64decode(text[len(ONE_LINE_PREFIX) :], validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
        else:
            key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError):
        raise BadInputError(
            f"verify key {where} is not an Ed25519 public key (PEM, or ed25519:BASE64)"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadInputError(f"verify key {where} is not an Ed25519 key")
    return VerifyKey(key=key, fingerprint=fingerprint_of(key))


# -- signatures ----------------------------------------------------------------------------
def _record(key: Ed25519PrivateKey, manifest_bytes: bytes) -> dict[str, str]:
    return {
        "algorithm": ALGORITHM,
        "key": fingerprint_of(key.public_key()),
        "signature": base64.b64encode(key.sign(manifest_bytes)).decode(),
    }


def signature_for(key: Ed25519PrivateKey, manifest_bytes: bytes) -> bytes:
    """The content of manifest.sig for these manifest bytes."""
    return json.dumps(_record(key, manifest_bytes), indent=2).encode()


def signatures_for_replacing(
    key: Ed25519PrivateKey, new_bytes: bytes, old_signature: bytes | None
) -> bytes:
    """manifest.sig while a manifest is being replaced (tasks/rekey.py): the new
    manifest's signature and the old one's, so that whichever manifest a crash leaves
    is still signed. Rewritten with the new one alone once the manifest is replaced."""
    records = [_record(key, new_bytes)]
    if old_signature is not None:
        with contextlib.suppress(ValueError, TypeError, KeyError, RecursionError):
            records += _records_in(old_signature)[:1]
    return json.dumps({"signatures": records}, indent=2).encode()


def _records_in(signature: bytes) -> list[dict[str, Any]]:
    record = json.loads(signature)
    if isinstance(record, dict) and isinstance(record.get("signatures"), list):
        return record["signatures"][:2]  # a replacement's two, never more
    return [record]


def looks_signed(signature: bytes) -> bool:
    """A signature file with a signature in it (not checked: that needs a verify key)."""
    try:
        return all(r["algorithm"] == ALGORITHM and r["signature"] for r in _records_in(signature))
    except (ValueError, TypeError, KeyError, RecursionError):
        return False


def check_signature(verify: VerifyKey, manifest_bytes: bytes, signature: bytes | None, label: str):
    """Raise IntegrityError naming why, unless `signature` is verify's over the bytes."""
    if signature is None:
        raise IntegrityError(
            f"{label} is not signed, and a verify key ({verify.fingerprint}) is "
            "configured: refused (a forger can rewrite an unsigned manifest)"
        )
    try:
        records = _records_in(signature)
        parsed = [
            (r["algorithm"], r["key"], base64.b64decode(r["signature"], validate=True))
            for r in records
        ]
    except (ValueError, TypeError, KeyError, RecursionError):
        raise IntegrityError(f"{label}: its signature file is unreadable") from None
    failures = []
    for algorithm, key, raw in parsed:
        try:
            _check_one(verify, manifest_bytes, algorithm, key, raw, label)
            return
        except IntegrityError as exc:
            failures.append(exc)
    raise failures[0] if failures else IntegrityError(f"{label}: its signature file is empty")


def _check_one(
    verify: VerifyKey, manifest_bytes: bytes, algorithm: Any, key: Any, raw: bytes, label: str
) -> None:
    if algorithm != ALGORITHM:
        raise IntegrityError(f"{label}: signature algorithm {str(algorithm)[:40]!r} is not ed25519")
    if key != verify.fingerprint:
        raise IntegrityError(
            f"{label} is signed by key {str(key)[:40]}, not by the verify key "
            f"{verify.fingerprint}: refused"
        )
    try:
        verify.key.verify(raw, manifest_bytes)
    except InvalidSignature:
        raise IntegrityError(
            f"{label} does not match its signature: it was changed after it was signed"
        ) from None


def check_reads_own_signature(signing_key: str | None, verify_key: str | None) -> None:
    """A drill checks with the verify key what it backed up itself: it must sign with the
    matching key (refused before the backup, which would be left behind otherwise)."""
    if verify_key and not signing_key:
        raise BadInputError(
            "a drill restores the backup it takes, which --verify-key checks: give the "
            "matching --signing-key too (or neither)"
        )
    if verify_key and signing_key and "${" not in verify_key + signing_key:
        own = verify_key_of(load_signing_key(signing_key)).fingerprint
        if load_verify_key(verify_key).fingerprint != own:
            raise BadInputError(
                "the drill's --signing-key does not match its --verify-key: its own backup "
                "would be refused"
            )

