"""The credential vault: per-skill secrets in `skill_credentials`, encrypted at rest.

Each value is sealed with AES-256-GCM (the `cryptography` package) under the vault key, with the
skill id and the entry's name as associated data, so a sealed value copied to another skill or
name does not open. A stored value reads `v1.<key id>.<base64url(nonce + ciphertext)>`; the key id
(8 hex digits of the key's SHA-256) says which key sealed it.

The key is `SELFMCP_SECRET_KEY` (any string; HKDF-SHA256 turns it into 32 bytes) or, without it,
32 random bytes generated into `<database>.key` beside the database, readable by its owner only
(mode 0600). An entry that does not open under the current key (the key was lost or changed) is
reported as missing, never as a crash: enter it again. `rekey()` re-seals every entry under a new
key (`selfmcp secrets rotate-key`).

Entry names are the environment variables a skill's auth_config names (`values_for` gives them to
its runs); names with a colon (`oauth2:token`) are the vault's own records (OAuth2 tokens).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any


from selfmcp.credentials import ENV_NAME_RE, is_server_only, replit_secrets_url, required_env_vars
from selfmcp.errors import InvalidArgument, MissingCredentials, SkillNotFound
from selfmcp.store import SkillStore, now_text

log = logging.getLogger("selfmcp.vault")

FORMAT = "v1"
OAUTH_TOKEN_ENTRY = "oauth2:token"
MAX_VALUE_BYTES = 16 * 1024


def key_path_for(db_path: str | os.PathLike[str]) -> Path:
    """Where the generated vault key lives: beside the database, `<database file name>.key`."""
    return Path(f"{os.path.abspath(db_path)}.key")


def key_from_text(text: str) -> bytes:
    """32 key bytes from SELFMCP_SECRET_KEY (any non-empty string)."""
    from cryptography.hazmat.primitives import hashes  # lazily, as in seal/open_sealed: start-up needs none
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"selfmcp vault v1").derive(text.encode())


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def read_or_create_key_file(path: Path) -> bytes:
    """The key in `path`, created (0600, 32 random bytes as base64url) if the file does not exist."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key_file(path)
    with os.fdopen(fd, "w") as out:
        out.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode() + "\n")
    log.info("created the vault key %s (owner-only); back it up with the database", path)
    return _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("the vault key %s is readable by other users (mode %o); chmod 600 it", path, mode)
    key = base64.urlsafe_b64decode(path.read_text().strip().encode())
    if len(key) != 32:
        raise ValueError(f"{path} does not hold a 32-byte vault key")
    return key


def _aad(skill_id: int, name: str) -> bytes:
    return f"selfmcp:{skill_id}:{name}".encode()


def seal(key: bytes, skill_id: int, name: str, value: str) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(12)
    sealed = AESGCM(key).encrypt(nonce, value.encode(), _aad(skill_id, name))
    return f"{FORMAT}.{key_id(key)}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def open_sealed(key: bytes, skill_id: int, name: str, stored: str) -> str | None:
    """The value, or None when it was sealed under another key or is damaged."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        version, _kid, data = stored.split(".", 2)
        raw = base64.urlsafe_b64decode(data.encode())
        if version != FORMAT or len(raw) < 28:
            return None
        return AESGCM(key).decrypt(raw[:12], raw[12:], _aad(skill_id, name)).decode()
    except (ValueError, InvalidTag, UnicodeDecodeError):
        return None


class Vault:
    """Per-skill secrets, sealed before they reach the store and opened only for a run of that skill."""

    def __init__(self, store: SkillStore, *, secret_key: str | None = None, key_file: Path | None = None) -> None:
        self.store = store
        self.key_file = key_file or key_path_for(store.db.path)
        self._fixed_key = key_from_text(secret_key) if secret_key else None
        self._key: bytes | None = None
        self._stamp: int | None = None
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        return "SELFMCP_SECRET_KEY" if self._fixed_key else str(self.key_file)

    def key(self, *, create: bool = True) -> bytes | None:
        """The vault key: SELFMCP_SECRET_KEY's, else the key file's (generated if `create`; None: no key yet).

        The file is read again when it changes, so `selfmcp secrets rotate-key` needs no restart.
        """
        if self._fixed_key is not None:
            return self._fixed_key
        with self._lock:
            try:
                stamp = self.key_file.stat().st_mtime_ns
            except FileNotFoundError:
                if not create:
                    return None
                self._key = read_or_create_key_file(self.key_file)
                stamp = self.key_file.stat().st_mtime_ns
            else:
                if stamp != self._stamp or self._key is None:
                    self._key = _read_key_file(self.key_file)
            self._stamp = stamp
            return self._key

    # -- skills are named by id or name

    def skill(self, ref: int | str) -> tuple[int, str]:
        """(id, name) of the active skill `ref` (an id, or a name as the command line gives it)."""
        with self.store.read() as tx:
            if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
                row = tx.skill(int(ref))
            else:
                row = tx.skill_by_name(ref)
        if row is None or not row["is_active"]:
            raise SkillNotFound(f"No active skill {ref!r}.")
        return row["id"], row["name"]

    # -- entries

    def set(self, skill_id: int, name: str, value: str) -> None:
        if not (ENV_NAME_RE.fullmatch(name) and not is_server_only(name) or name == OAUTH_TOKEN_ENTRY):
            raise InvalidArgument(f"Invalid credential name {name!r}.",
                                  hint="Use the environment variable name the skill's auth_config names.")
        if not value or len(value.encode()) > MAX_VALUE_BYTES:
            raise InvalidArgument(f"The value for {name} is empty or longer than {MAX_VALUE_BYTES} bytes.",
                                  hint="Paste the key itself, without quotes or spaces around it.")
        sealed = seal(self.key(), skill_id, name, value)
        with self.store.write() as tx:
            if tx.skill(skill_id) is None:
                raise SkillNotFound(f"No skill with id {skill_id}.")
            tx.put_credential(skill_id, name, sealed, now=now_text())

    def delete(self, skill_id: int, name: str) -> bool:
        with self.store.write() as tx:
            return tx.delete_credential(skill_id, name)

    def _opened(self, skill_id: int) -> dict[str, str]:
        key = self.key(create=False)
        with self.store.read() as tx:
            rows = tx.credentials(skill_id)
        if key is None:
            return {}
        found = {}
        for row in rows:
            value = open_sealed(key, skill_id, row["key"], row["value"])
            if value is not None:
                found[row["key"]] = value
        return found

    def get(self, skill_id: int, name: str) -> str | None:
        return self._opened(skill_id).get(name)

    def names(self, skill_id: int) -> list[str]:
        """Names of the skill's entries that open under the current key."""
        return sorted(self._opened(skill_id))

    def values_for(self, skill_id: int, auth_config: Mapping[str, Any] | None = None) -> dict[str, str]:
        """The environment variables the vault gives a run of the skill (OAuth2: the access token in token_env)."""
        opened = self._opened(skill_id)
        values = {k: v for k, v in opened.items() if ENV_NAME_RE.fullmatch(k)}
        token = opened.get(OAUTH_TOKEN_ENTRY)
        if token and auth_config and auth_config.get("type") == "oauth2" and auth_config.get("token_env"):
            access = json.loads(token).get("access_token")
            if access:
                values[auth_config["token_env"]] = access
        if auth_config is not None:
            wanted = set(required_env_vars(auth_config))
            values = {k: v for k, v in values.items() if k in wanted}
        return values

    def listing(self) -> list[dict[str, Any]]:
        """Every skill with vault entries: {skill_id, name, keys, unreadable}; names only, never values."""
        key = self.key(create=False)
        with self.store.read() as tx:
            rows = tx.all_credentials()
        out: dict[int, dict[str, Any]] = {}
        for row in rows:
            entry = out.setdefault(row["skill_id"], {"skill_id": row["skill_id"], "name": row["name"], "keys": [],
                                                     "unreadable": []})
            readable = key is not None and open_sealed(key, row["skill_id"], row["key"], row["value"]) is not None
            entry["keys" if readable else "unreadable"].append(row["key"])
        return list(out.values())

    def rekey(self, new_key: bytes) -> dict[str, int]:
        """Re-seal every entry that opens under the current key with `new_key`; drop the others."""
        old = self.key(create=False)
        moved = dropped = 0
        with self.store.write() as tx:
            for row in tx.all_credentials():
                value = open_sealed(old, row["skill_id"], row["key"], row["value"]) if old else None
                if value is None:
                    tx.delete_credential(row["skill_id"], row["key"])
                    dropped += 1
                else:
                    tx.put_credential(row["skill_id"], row["key"], seal(new_key, row["skill_id"], row["key"], value),
                                      now=now_text())
                    moved += 1
        if self._fixed_key is not None:
            self._fixed_key = new_key
        return {"resealed": moved, "dropped": dropped}


def missing_error(skill_id: int, name: str, missing: list[str], environ: Mapping[str, str], link: Any = None,
                  url: str | None = None) -> MissingCredentials:
    """The missing_credentials error of a run: the names, and where the user can enter them (`url`).

    The error also carries `skill_id` and the pending `link` as attributes (not in its payload), for
    a skill_execute that asks the client to open the page (URL-mode elicitation).
    """
    if url:
        hint = (f"Show the user this link ({url}): they open it, enter the owner password and the value(s), and "
                f"then you call skill_execute again. It works once, for 10 minutes; skill_auth_url(skill_id="
                f"{skill_id}) gives a new one.")
    else:
        hint = (f"Call skill_auth_url(skill_id={skill_id}) for setup instructions; the owner can also run "
                f"`selfmcp secrets set {name} {missing[0]}` on the server.")
    replit = replit_secrets_url(environ)
    if replit:
        hint += f" On Replit, add the missing vars at: {replit}"
    details: dict[str, Any] = {"missing": missing}
    if url:
        details["url"] = url
    error = MissingCredentials(f"Skill {name!r} needs {', '.join(missing)}, which "
                               f"{'is' if len(missing) == 1 else 'are'} not set for it.", hint=hint, **details)
    error.skill_id, error.link = skill_id, link
    return error
