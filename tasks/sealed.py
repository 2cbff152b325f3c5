"""An encrypted backup's manifest in two parts: a plain envelope and a sealed body.

Encrypting the data files alone leaves names in the clear: file names carry table and
collection names, a Docstore unit is a namespace, consistency points are kept per table,
quality checks keep samples of values, options keep include patterns. So an encrypted
backup's `manifest.json` is an envelope holding only what hosts without the identity
need: ids, times, role, the (redacted) sources, totals, the parent, and each stored
file's opaque path, size and SHA-256, which `verify` checks without the key. The whole
manifest is age-encrypted to the backup's recipients in `manifest.sealed.age`, whose
size and SHA-256 the envelope records. (An incremental backup reads its parent's
consistency points from the body, so it needs an identity that opens the parent.)

Read with an identity, the body is decrypted and must match its envelope exactly (the
envelope recomputed from the body equals the stored one): a body swapped in from
another backup, or an envelope edited around it, is refused. age encrypts to public
keys, so anyone holding a recipient can write a body: only a signed manifest
(tasks/signing.py), whose signature covers the body's SHA-256, proves who wrote it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pyrage
from pydantic import ValidationError

from backstop.drivers.errors import BadInputError, IntegrityError
from backstop.tasks.manifest import Manifest, SealedPart

SEALED_NAME = "manifest.sealed.age"
# A re-encrypted backup's sealed part has a name of its own (tasks/rekey.py): the old
# one stays until the manifest naming the new one has replaced the old manifest.
SEALED_NAMES = re.compile(r"^manifest\.sealed(\.[0-9a-f]{8})?\.age\Z")


class WrongIdentityError(BadInputError):
    """No identity given opens an encrypted backup's sealed manifest."""


def envelope_of(manifest: Manifest) -> Manifest:
    """What of `manifest` may be stored in the clear (without `sealed`)."""
    units = [
        unit.model_copy(
            update={
                "name": f"unit-{index:04d}",
                "point": {},
                "meta": {},
                "files": [
                    file.model_copy(
                        update={
                            "name": file.path or file.name,
                            "path": None,
                            "meta": {},
                            "raw_sha256": "",  # a plaintext hash confirms a guessed content
                        }
                    )
                    for file in unit.files
                ],
            }
        )
        for index, unit in enumerate(manifest.units)
    ]
    return manifest.model_copy(
        update={
            "options": {},
            "units": units,
            "consistency": manifest.consistency.model_copy(update={"point": {}, "warnings": []}),
            "quality": manifest.quality.model_copy(update={"checks": []}),
            "sealed": None,
        }
    )


def seal(
    manifest: Manifest, recipients: list[Any], name: str = SEALED_NAME
) -> tuple[Manifest, bytes]:
    """(the envelope to store as manifest.json, the sealed body's bytes)."""
    body = manifest.model_copy(update={"sealed": None}).model_dump_json(indent=2).encode()
    sealed = pyrage.encrypt(body, recipients)
    part = SealedPart(name=name, bytes=len(sealed), sha256=hashlib.sha256(sealed).hexdigest())
    return envelope_of(manifest).model_copy(update={"sealed": part}), sealed


def unseal(envelope: Manifest, sealed: bytes, identities: list[Any], label: str) -> Manifest:
    """The full manifest from its sealed body; IntegrityError unless it is the body of
    exactly this envelope, BadInputError when no identity opens it."""
    part = envelope.sealed
    assert part is not None
    if len(sealed) != part.bytes or hashlib.sha256(sealed).hexdigest() != part.sha256:
        raise IntegrityError(
            f"{label}: {part.name} does not match the size and SHA-256 its manifest records"
        )
    try:
        body = pyrage.decrypt(sealed, identities)
    except pyrage.DecryptError:
        # Its bytes are those the manifest records, so the key is what is wrong.
        recipients = envelope.encryption.recipients if envelope.encryption else []
        raise WrongIdentityError(
            f"{label}: no identity given opens this encrypted backup (its recipients: "
            f"{', '.join(recipients)})"
        ) from None
    try:
        manifest = Manifest.model_validate_json(body)
    except (ValueError, ValidationError, RecursionError) as exc:
        raise IntegrityError(f"{label}: {part.name} is unreadable: {exc}") from None
    if manifest.sealed is not None or (
        envelope_of(manifest).model_dump(mode="json")
        != envelope.model_copy(update={"sealed": None}).model_dump(mode="json")
    ):
        raise IntegrityError(
            f"{label}: the sealed manifest ({part.name}) is not the one its envelope "
            "describes: refused"
        )
    return manifest  # opened: `sealed` is None, as on a plain backup's manifest
