"""Keyed pseudonyms for patient and study identifiers (PHI never leaves the manifest).

A pseudonym is HMAC-SHA256(key, namespace + identifier), hex, truncated to 16 characters (64 bits: with the
paper's ~35k patients a collision has probability ~1e-10, and `pseudonymize_column` checks anyway). Without the
key nobody can test a guessed identifier against a pseudonym, unlike a plain hash of a medical record number.

The key comes from `--id-key FILE` or is created once as `OUT/pseudonym.key` (mode 0600) and reused when the same
output folder is sharded again, so reruns give the same pseudonyms and the same shard bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from hnp.errors import HnpError

KEY_FILE_NAME = "pseudonym.key"
PSEUDONYM_CHARS = 16
_MIN_KEY_BYTES = 16


def load_or_create_key(key_file: str | Path | None, out_dir: Path) -> bytes:
    """The secret for the pseudonyms: the user's key file, else `out_dir/pseudonym.key`, created if absent.

    Args:
        key_file: a file holding the secret (its bytes, surrounding whitespace stripped); None to use or create
            the key beside the shards.
        out_dir: the shard folder, where a created key is written with mode 0600.
    """
    if key_file is not None:
        return _read_key(Path(key_file))
    path = out_dir / KEY_FILE_NAME
    if path.exists():
        return _read_key(path)
    key = secrets.token_hex(32).encode()
    # O_EXCL + mode 0600 at creation: the secret is never readable by others, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return key


def _read_key(path: Path) -> bytes:
    try:
        key = path.read_bytes().strip()
    except OSError as err:
        raise HnpError(f"{path}: cannot read the pseudonym key: {err.strerror or err}") from None
    if len(key) < _MIN_KEY_BYTES:
        raise HnpError(f"{path}: pseudonym key too short ({len(key)} bytes, need at least {_MIN_KEY_BYTES})")
    return key


def pseudonymize(key: bytes, identifier: str, namespace: str = "patient") -> str:
    """The keyed pseudonym of one identifier; `namespace` keeps a patient and a study with equal IDs apart.

    Args:
        key: the secret from `load_or_create_key`.
        identifier: the raw identifier as text.
        namespace: "patient" or "study".
    """
    message = f"{namespace}:{identifier}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:PSEUDONYM_CHARS]


def pseudonymize_column(key: bytes, identifiers: Iterable[str], namespace: str = "patient") -> dict[str, str]:
    """Pseudonyms of the distinct identifiers, checked to be collision-free.

    Args:
        key: the secret from `load_or_create_key`.
        identifiers: raw identifiers (repeats allowed).
        namespace: "patient" or "study".
    """
    mapping = {ident: pseudonymize(key, ident, namespace) for ident in set(identifiers)}
    if len(set(mapping.values())) != len(mapping):
        raise HnpError(f"two {namespace} identifiers share a pseudonym; use another --id-key")
    return mapping


def scrub(text: str, identifier: str, pseudonym: str) -> str:
    """`text` with the raw identifier replaced by its pseudonym (paths and messages may embed patient IDs).

    Identifiers under 4 characters are left alone: they occur by chance inside any path or number.

    Args:
        text: a message or path that may contain the identifier.
        identifier: the raw patient identifier.
        pseudonym: what to put in its place.
    """
    if len(identifier) < 4:
        return text
    return text.replace(identifier, f"<patient {pseudonym}>")
