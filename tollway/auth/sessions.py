"""Dashboard sessions: a signed value carried in the ``session`` cookie or as a bearer token.

The value holds the user id and the login time, signed with ``SESSION_SECRET`` (itsdangerous), so
every node that shares the secret accepts it. It grants nothing by itself: each request re-reads
the user, so a disabled or deleted user loses access at once, sessions included.
"""

from __future__ import annotations

import hashlib
import secrets

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

SESSION_COOKIE = "session"
SESSION_MAX_AGE = 30 * 24 * 3600
_SALT = "tollway-session"


class SessionCodec:
    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=_SALT)

    def encode(self, user_id: int) -> str:
        return self._serializer.dumps({"id": user_id})

    def decode(self, value: str) -> int | None:
        """The user id of a valid, unexpired session value; None otherwise."""
        try:
            data = self._serializer.loads(value, max_age=SESSION_MAX_AGE)
        except (BadSignature, SignatureExpired, ValueError):
            return None
        user_id = data.get("id") if isinstance(data, dict) else None
        return user_id if isinstance(user_id, int) else None


def generate_access_token() -> str:
    """A system access token for scripts (shown once; only its hash is stored)."""
    return secrets.token_urlsafe(24)


def hash_access_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
