"""API keys: generation, the SHA-256 lookup hash, the encrypted copy the owner can reveal, masks.

Keys are ``sk-`` + 48 characters from ``[0-9A-Za-z]`` (new-api's format; ``-`` never occurs, so
``sk-KEY-CHANNELID`` can pin a channel). The database keeps ``sha256(key)`` for lookups and an
AES-GCM encryption of the key under a key derived from ``CRYPTO_SECRET``; never the key itself.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import string

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_ALPHABET = string.digits + string.ascii_letters
KEY_LENGTH = 48


def generate_api_key() -> str:
    """A new key without the ``sk-`` prefix (that is how new-api stores and lists them)."""
    return "".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_LENGTH))


def hash_key(key: str) -> str:
    """The lookup hash of a key given with or without ``sk-``."""
    return hashlib.sha256(key.removeprefix("sk-").encode()).hexdigest()


def key_hint(key: str) -> str:
    """The characters a masked key shows: the first four and the last four."""
    return key[:4] + key[-4:]


def mask_hint(hint: str) -> str:
    """``sk-abcd**********wxyz`` from a stored hint."""
    return f"sk-{hint[:4]}**********{hint[4:]}"


class KeyCipher:
    """Encrypts stored keys so that their owner can see them again (AES-256-GCM)."""

    def __init__(self, crypto_secret: str) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"tollway-api-keys", info=b"v1").derive(
            crypto_secret.encode()
        )
        self._aead = AESGCM(derived)

    def encrypt(self, key: str) -> str:
        nonce = secrets.token_bytes(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, key.encode(), None)).decode()

    def decrypt(self, token: str) -> str | None:
        """The key, or None when the stored copy was made with another ``CRYPTO_SECRET``."""
        try:
            raw = base64.b64decode(token)
            return self._aead.decrypt(raw[:12], raw[12:], None).decode()
        except (InvalidTag, ValueError):
            return None
