"""`backstop keys generate DIR`: the keys an encrypted, signed store needs, made once.

Four files, the private ones readable by their owner only, none replaced if present:
- age-identity.txt   (private) decrypts backups: restore hosts, or a Secret block;
- age-recipient.txt  (public)  encrypts backups: backup hosts (--recipients-file);
- signing-key.pem    (private) signs manifests: backup hosts, or a Secret block;
- verify-key.pem     (public)  checks signatures: restore hosts (--verify-key).
docs/security.md says where each lives and how to rotate them.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from backstop.drivers.errors import BadInputError
from backstop.tasks import crypto, signing

FILES = {
    "identity": "age-identity.txt",
    "recipient": "age-recipient.txt",
    "signing_key": "signing-key.pem",
    "verify_key": "verify-key.pem",
}


def check_keys_target(folder: str) -> None:
    """Exit 2 before anything is made: a key file already there is never replaced."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise BadInputError(f"{folder!r} exists and is not a folder")
    present = [name for name in FILES.values() if os.path.lexists(path / name)]  # links too
    if present:
        raise BadInputError(
            f"{folder!r} already holds {', '.join(present)}: keys are never overwritten "
            "(losing an identity loses every backup encrypted to it); choose another folder"
        )


def generate_keys(folder: str) -> dict[str, Any]:
    check_keys_target(folder)
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity, recipient = crypto.generate_identity()
    private_pem, public_pem = signing.generate()
    verify = signing.load_verify_key_text(public_pem)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    crypto.private_key_file(
        path / FILES["identity"],
        f"# created: {created}\n# public key: {recipient}\n{identity}\n",
    )
    _public_file(path / FILES["recipient"], recipient + "\n")
    crypto.private_key_file(path / FILES["signing_key"], private_pem)
    _public_file(path / FILES["verify_key"], public_pem)
    return {
        "dir": str(path.absolute()),
        "files": {key: str((path / name).absolute()) for key, name in FILES.items()},
        "recipient": recipient,
        "recipient_fingerprint": crypto.fingerprint(recipient),
        "verify_key": signing.one_line(verify.key),
        "verify_key_fingerprint": verify.fingerprint,
    }


def _public_file(path: Path, text: str) -> None:
    """A new file (never through a link planted in its place, never over another)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def next_steps(result: dict[str, Any]) -> str:
    files = result["files"]
    return "\n".join(
        [
            f"wrote {result['dir']}:",
            f"  {files['identity']}  private: decrypts; keep offline or in a Secret block",
            f"  {files['signing_key']}  private: signs; backup hosts only",
            f"  {files['recipient']}  public: {result['recipient']}",
            f"  {files['verify_key']}  public: {result['verify_key']}",
            "back up with:  --recipients-file " + files["recipient"]
            + " --signing-key " + files["signing_key"],
            "restore with:  --identity " + files["identity"]
            + " --verify-key " + result["verify_key"],
            "add a second, offline recovery recipient: docs/security.md",
        ]
    )
