"""The console's users: a JSON file (`RG_CONSOLE_USERS_FILE`), managed with
`rebate-guard users add|list|remove|role` and read by the worker's guard (streams/auth.py),
which re-reads it when it changes: no restart.

    {"alice": {"role": "reviewer", "salt": "<hex>", "hash": "<hex>", "n": 16384, "r": 8, "p": 1}}

Passwords are stored only as scrypt hashes (stdlib `hashlib.scrypt`, a random salt each); the
file is written whole and renamed into place (a reader never sees half of it), readable and
writable by its owner only (0600). The bootstrap user (`RG_CONSOLE_USER`) is not in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.roles import ROLES

log = logging.getLogger(__name__)

#: scrypt cost: 16 MiB and ~50 ms a check, on the login path only.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 10
#: Longest user name: names are otherwise free (any character).
MAX_NAME = 128


class UsersError(ValueError):
    """A users file, user name, role or password that cannot be used."""


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    memory = 128 * r * n + 1024 * 1024
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=memory)


@dataclass(frozen=True)
class User:
    name: str
    role: str
    salt: bytes
    hash: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    @classmethod
    def create(cls, name: str, role: str, password: str) -> User:
        check_name(name)
        check_role(role)
        salt = secrets.token_bytes(16)
        return cls(name, role, salt, _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))

    def verify(self, password: str) -> bool:
        given = _scrypt(password, self.salt, self.n, self.r, self.p)
        return hmac.compare_digest(given, self.hash)

    def with_role(self, role: str) -> User:
        check_role(role)
        return User(self.name, role, self.salt, self.hash, self.n, self.r, self.p)

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "salt": self.salt.hex(),
            "hash": self.hash.hex(),
            "n": self.n,
            "r": self.r,
            "p": self.p,
        }

    @classmethod
    def from_json(cls, name: str, data: Any) -> User:
        try:
            user = cls(
                name,
                str(data["role"]),
                bytes.fromhex(data["salt"]),
                bytes.fromhex(data["hash"]),
                int(data["n"]),
                int(data["r"]),
                int(data["p"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsersError(f"user {name!r}: {exc!r}") from None
        check_role(user.role)
        if not (2**10 <= user.n <= 2**20 and 1 <= user.r <= 32 and 1 <= user.p <= 16):
            raise UsersError(f"user {name!r}: scrypt parameters out of range")
        return user


#: Checked against when the name is unknown, so a wrong name costs as long as a wrong password.
DUMMY = User("", ROLES[0], b"\0" * 16, b"\0" * 32)


def check_name(name: str) -> None:
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise UsersError(f"a user name is 1 to {MAX_NAME} printable characters")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise UsersError(f"unknown role {role!r}: one of {', '.join(ROLES)}")


def weak_password(name: str, password: str) -> str | None:
    """Why `password` is too weak for `name`, or None."""
    if len(password) < MIN_PASSWORD:
        return f"a password has at least {MIN_PASSWORD} characters"
    if len(set(password)) < 5:
        return "a password has at least 5 different characters"
    if name and name.lower() in password.lower():
        return "a password does not contain the user name"
    return None


class UsersFile:
    """The users file at `path`. `current()` is what the guard asks on every session
    request: the users as last read, read again only when the file changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}

    def read(self) -> dict[str, User]:
        """The users in the file now ({} when there is no file); UsersError when malformed."""
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsersError(f"{self.path}: not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise UsersError(f"{self.path}: not a JSON object")
        return {name: User.from_json(name, entry) for name, entry in data.items()}

    def current(self) -> Mapping[str, User]:
        try:
            st = self.path.stat()
            seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            seen = None
        if seen != self._seen:
            self._seen = seen
            try:
                self._users = self.read()
            except (OSError, UsersError) as exc:
                # Fail closed: nobody from the file logs in until it is fixed.
                log.error("console users file unusable, its users refused: %s", exc)
                self._users = {}
        return self._users

    def write(self, users: Mapping[str, User]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        draft = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({name: u.to_json() for name, u in sorted(users.items())}, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(draft, self.path)

    @contextlib.contextmanager
    def editing(self) -> Iterator[dict[str, User]]:
        """The users, to change in place; written back on leaving, one editor at a time."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(
            self.path.with_name(f".{self.path.name}.lock"), os.O_CREAT | os.O_RDWR, 0o600
        )
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            users = self.read()
            yield users
            self.write(users)
        finally:
            os.close(lock)
