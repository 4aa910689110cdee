"""The hub's RS384 key pairs for ``private_key_jwt`` (openemr.md §2.3, §2.6), with rotation.

Layout under ``<state_dir>/keys``: one PEM file per key (``<kid>.pem``, mode 0600) and
``index.json`` naming the active key and the previous ones still published. The ``kid``
is the key's RFC 7638 thumbprint, so it never collides and a JWKS can be checked by eye.

Rotation makes a new key active and keeps the previous one in the JWKS, so an OpenEMR
that fetches ``jwks_uri`` keeps accepting assertions signed a moment earlier. With an
inline JWKS (sent at registration), OpenEMR keeps the registered keys only; there is no
RFC 7592 update in OpenEMR (§2.1), so rotating means registering the backend client again
(``meoring openemr register --rotate-key`` does that).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from joserfc.jwk import RSAKey

from hub.openemr.errors import NotRegistered

__all__ = ["KEY_ALG", "KeyStore", "write_private_file"]

KEY_ALG = "RS384"
KEY_BITS = 2048
KEEP_PREVIOUS = 1


def write_private_file(path: Path, data: str | bytes) -> None:
    """Write ``path`` atomically (temp file + rename), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class KeyStore:
    """Key pairs in one directory; thread-safe for readers (files are replaced atomically)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def _index_path(self) -> Path:
        return self.directory / "index.json"

    def _index(self) -> dict[str, Any]:
        try:
            data = json.loads(self._index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"active": None, "previous": []}
        except ValueError:
            raise NotRegistered(f"{self._index_path} is not valid JSON; restore it or rotate the key") from None
        return data if isinstance(data, dict) else {"active": None, "previous": []}

    def _load(self, kid: str) -> RSAKey:
        try:
            pem = (self.directory / f"{kid}.pem").read_bytes()
        except FileNotFoundError:
            raise NotRegistered(f"the hub's key {kid} is missing from {self.directory}") from None
        return RSAKey.import_key(pem, parameters={"kid": kid, "use": "sig", "alg": KEY_ALG})

    def has_key(self) -> bool:
        return bool(self._index().get("active"))

    def active(self) -> RSAKey:
        """The signing key; :class:`NotRegistered` if none was generated yet."""
        kid = self._index().get("active")
        if not kid:
            raise NotRegistered(f"the hub has no OpenEMR key pair in {self.directory} (run `meoring openemr register`)")
        return self._load(str(kid))

    def ensure(self) -> RSAKey:
        """The active key, generated first if there is none."""
        if self.has_key():
            return self.active()
        return self.rotate()

    def rotate(self) -> RSAKey:
        """Generate a new active key; the old active one stays published as previous."""
        key = RSAKey.generate_key(KEY_BITS, parameters={"use": "sig", "alg": KEY_ALG}, private=True)
        kid = key.thumbprint()
        key = RSAKey.import_key(key.as_pem(private=True), parameters={"kid": kid, "use": "sig", "alg": KEY_ALG})
        write_private_file(self.directory / f"{kid}.pem", key.as_pem(private=True))
        index = self._index()
        previous = [str(k) for k in index.get("previous") or []]
        if index.get("active"):
            previous.insert(0, str(index["active"]))
        kept, dropped = previous[:KEEP_PREVIOUS], previous[KEEP_PREVIOUS:]
        write_private_file(self._index_path, json.dumps({"active": kid, "previous": kept}, indent=2))
        for old in dropped:
            (self.directory / f"{old}.pem").unlink(missing_ok=True)
        return key

    def jwks(self) -> dict[str, Any]:
        """The public JWKS: the active key first, then the previous ones still accepted."""
        index = self._index()
        kids = [k for k in [index.get("active"), *(index.get("previous") or [])] if k]
        return {"keys": [self._load(str(kid)).as_dict(private=False) for kid in kids]}

    def active_jwks(self) -> dict[str, Any]:
        """A JWKS holding only the active key (what an inline registration sends)."""
        return {"keys": [self.active().as_dict(private=False)]}
