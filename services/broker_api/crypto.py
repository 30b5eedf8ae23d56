"""Encryption at rest of OTC credentials (Fernet: AES-128-CBC + HMAC-SHA256, random IV)."""

from __future__ import annotations

import hmac

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr


class CredentialsCipher:
    def __init__(self, key: SecretStr) -> None:
        self._fernet = Fernet(key.get_secret_value().encode())

    def encrypt(self, secret: SecretStr) -> str:
        return self._fernet.encrypt(secret.get_secret_value().encode()).decode()

    def decrypt(self, token: str) -> SecretStr:
        try:
            return SecretStr(self._fernet.decrypt(token.encode()).decode())
        except InvalidToken:
            # Stored with another key (rotated without re-encryption): treat as unknown, never crash.
            return SecretStr("")

    def matches(self, token: str | None, secret: SecretStr) -> bool:
        """Constant-time comparison of a stored token's plaintext with ``secret``."""
        if token is None:
            return False
        stored = self.decrypt(token).get_secret_value()
        return bool(stored) and hmac.compare_digest(stored.encode(), secret.get_secret_value().encode())
