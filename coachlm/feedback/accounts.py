"""Labelers, passwords, API tokens and browser sessions.

Passwords are hashed with argon2id (Biryukov et al., RFC 9106; winner of the Password Hashing
Competition) through argon2-cffi, with OWASP's recommended parameters (Password Storage Cheat
Sheet: m=19 MiB, t=2, p=1). Hashes made by earlier versions with scrypt (RFC 7914) still verify
and are replaced by an argon2id hash at the next successful sign-in (`needs_rehash`).

Hashing is slow on purpose (~50-100 ms), so it never runs inside a write transaction:
`sign_in` reads the account, verifies outside any transaction and lock, then writes the new
session in a short transaction; `hashed()` lets callers hash a new password before they open
theirs. A sign-in for an unknown, deactivated or password-less account verifies against a
dummy hash, so that the response time does not tell those cases apart.

API tokens and session tokens are 256-bit random strings: only their SHA-256 is stored (a
fast hash is enough for a random secret, and a leaked database then holds no usable token).
Tokens are never logged. Changing a password or deactivating a labeler ends their sessions and
revokes their API token (reactivating does not revive it; an admin issues a new one).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from coachlm.feedback.db import Store, StoreError
from coachlm.feedback.tables import ROLES, Labeler, WebSession, utcnow
from coachlm.feedback.text import bad_text, check_text

# OWASP Password Storage Cheat Sheet, argon2id option 1: 19 MiB, 2 iterations, 1 lane.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32,
                        salt_len=16, type=Type.ID)
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # longer inputs only cost hashing time
MAX_NAME = 100
MAX_COST = 1e6


@dataclass(frozen=True)
class Hashed:
    """A password already hashed (outside any transaction), to pass to create/update."""

    value: str


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def _check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise StoreError(f"a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    check_text(password, "the password")


def hashed(password: str | None) -> Hashed | None:
    """Check and hash a new password now (before a write transaction); None stays None."""
    if password is None:
        return None
    _check_password(password)
    return Hashed(hash_password(password))


def _verify_scrypt(password: str, stored: str) -> bool:
    algo, n, r, p, salt, digest = stored.split("$")
    expected = base64.b64decode(digest)
    got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                         p=int(p), dklen=len(expected), maxmem=2**30)
    return algo == "scrypt" and hmac.compare_digest(got, expected)


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def verify_password(password: str, stored: str | None) -> bool:
    """Whether `password` matches `stored`; with no stored hash, a dummy verify keeps timing."""
    try:
        if stored and stored.startswith("scrypt$"):
            return _verify_scrypt(password, stored)
        return HASHER.verify(stored or _dummy_hash(), password) and bool(stored)
    except (VerificationError, InvalidHashError, ValueError, UnicodeEncodeError):
        return False


def needs_rehash(stored: str) -> bool:
    """True for legacy scrypt hashes and argon2 hashes made with other parameters."""
    return stored.startswith("scrypt$") or HASHER.check_needs_rehash(stored)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise StoreError(f"role must be one of {ROLES}, got {role!r}")


def _check_cost(cost: float) -> float:
    if isinstance(cost, bool) or not isinstance(cost, (int, float)):
        raise StoreError(f"cost_per_label must be a number, got {cost!r}")
    if not math.isfinite(cost) or not 0 <= cost <= MAX_COST:
        raise StoreError(f"cost_per_label must be a finite number from 0 to {MAX_COST:g}")
    return float(cost)


def _password_hash(password: str | Hashed | None) -> str | None:
    if isinstance(password, Hashed) or password is None:
        return password.value if password else None
    _check_password(password)
    return hash_password(password)


def create_labeler(s: Session, name: str, password: str | Hashed | None = None,
                   role: str = "labeler", cost_per_label: float = 0.0,
                   source: str = "human") -> Labeler:
    """A new labeler; without a password it cannot sign in (API token or imported labels only).
    Pass `hashed(password)` to keep the slow hash out of the caller's transaction."""
    _check_role(role)
    name = check_text(name.strip(), "a labeler name")
    if not name or len(name) > MAX_NAME:
        raise StoreError(f"a labeler name must be 1 to {MAX_NAME} characters")
    cost = _check_cost(cost_per_label)
    if s.scalar(select(Labeler).where(Labeler.name == name)) is not None:
        raise StoreError(f"labeler {name!r} already exists")
    lab = Labeler(name=name, role=role, source=source, cost_per_label=cost,
                  password_hash=_password_hash(password))
    s.add(lab)
    s.flush()
    return lab


def get_labeler(s: Session, name: str) -> Labeler:
    lab = s.scalar(select(Labeler).where(Labeler.name == name))
    if lab is None:
        raise StoreError(f"no labeler named {name!r}")
    return lab


def _keep_an_admin(s: Session, lab: Labeler, role: str | None, active: bool | None) -> None:
    losing = lab.role == "admin" and lab.active and (
        (role is not None and role != "admin") or active is False)
    if losing and not s.scalar(select(func.count()).select_from(Labeler).where(
            Labeler.role == "admin", Labeler.active, Labeler.id != lab.id)):
        raise StoreError(f"{lab.name!r} is the only active admin; make another admin first")


def update_labeler(s: Session, name: str, *, password: str | Hashed | None = None,
                   role: str | None = None, cost_per_label: float | None = None,
                   active: bool | None = None) -> Labeler:
    """Change a labeler. A new password or deactivating ends their sessions and revokes their
    API token (an admin issues a new one). The last active admin cannot be demoted or deactivated."""
    lab = get_labeler(s, name)
    if role is not None:
        _check_role(role)
    _keep_an_admin(s, lab, role, active)
    if password is not None:  # a reset (often after a suspected leak) revokes every credential
        lab.password_hash = _password_hash(password)
        end_sessions(s, lab.id)
        lab.token_hash = None
    if role is not None:
        lab.role = role
    if cost_per_label is not None:
        lab.cost_per_label = _check_cost(cost_per_label)
    if active is not None:
        lab.active = active
        if not active:  # signed out everywhere, and the token is gone for good
            end_sessions(s, lab.id)
            lab.token_hash = None
    return lab


def _sign_in_name(name: str) -> str | None:
    """The name to look up, or None for a name that cannot exist (too long, NUL, surrogate)."""
    name = name.strip()
    return name if 0 < len(name) <= MAX_NAME and bad_text(name) is None else None


def _verify_for(lab: Labeler | None, password: str) -> bool:
    """One hash verification whatever the account's state (timing does not reveal it)."""
    usable = lab is not None and lab.active and lab.password_hash
    ok = verify_password(password[:MAX_PASSWORD], lab.password_hash if usable else None)
    return bool(usable and ok and len(password) <= MAX_PASSWORD)


def authenticate(s: Session, name: str, password: str) -> Labeler | None:
    """The active labeler with this name and password, else None (in one session; the web
    app uses `sign_in`, which keeps the hash out of the write transaction)."""
    key = _sign_in_name(name)
    lab = s.scalar(select(Labeler).where(Labeler.name == key)) if key else None
    return lab if _verify_for(lab, password) else None


def sign_in(store: Store, name: str, password: str, hours: float = 12.0
            ) -> tuple[str, Labeler] | None:
    """(session cookie token, labeler) for a right name and password, else None.

    1. read the account; 2. verify (slow) outside any transaction; 3. if the hash is legacy,
    rehash (slow) still outside; 4. one short write: the new session (and the new hash)."""
    key = _sign_in_name(name)
    lab = None
    if key:
        with store.read() as s:
            lab = s.scalar(select(Labeler).where(Labeler.name == key))
    if not _verify_for(lab, password):
        return None
    assert lab is not None and lab.password_hash
    new_hash = hash_password(password) if needs_rehash(lab.password_hash) else None

    def write(s: Session) -> tuple[str, Labeler]:
        row = s.get(Labeler, lab.id)
        if row is None or not row.active or row.password_hash != lab.password_hash:
            raise StoreError("the account changed during sign-in; please try again")
        if new_hash:
            row.password_hash = new_hash
        return create_session(s, row, hours)[0], row

    return store.run(write)


def issue_token(s: Session, name: str) -> str:
    """A new API token for `name` (replacing any old one). Shown once; only its hash is kept."""
    lab = get_labeler(s, name)
    token = secrets.token_urlsafe(32)
    lab.token_hash = token_hash(token)
    return token


_BY_TOKEN = select(Labeler).where(Labeler.token_hash == bindparam("hash"))
_L = Labeler.__table__
# The columns a request needs to act for its caller (`Caller`), by token hash, in Core.
CALLER_BY_TOKEN = select(_L.c.id, _L.c.name, _L.c.role, _L.c.cost_per_label).where(
    _L.c.token_hash == bindparam("hash"), _L.c.active.is_(True))


def labeler_by_token(s: Session, token: str) -> Labeler | None:
    lab = s.scalar(_BY_TOKEN, {"hash": token_hash(token)})
    return lab if lab is not None and lab.active else None


def caller_by_token(store: Store, token: str) -> tuple[Any, ...] | None:
    """(id, name, role, cost_per_label) of the active labeler holding this API token: one
    indexed read outside any transaction, made once per API request."""
    return store.one(CALLER_BY_TOKEN, {"hash": token_hash(token)})


async def caller_by_token_async(store: Store, token: str) -> tuple[Any, ...] | None:
    """`caller_by_token` for a coroutine (the JSON API), without a worker thread."""
    return await store.one_async(CALLER_BY_TOKEN, {"hash": token_hash(token)})


def create_session(s: Session, lab: Labeler, hours: float = 12.0) -> tuple[str, WebSession]:
    """(cookie token, session row). The row carries this session's CSRF token."""
    token = secrets.token_urlsafe(32)
    row = WebSession(id=token_hash(token), labeler_id=lab.id, csrf=secrets.token_urlsafe(32),
                     expires_at=utcnow() + timedelta(hours=hours))
    s.add(row)
    s.execute(delete(WebSession).where(WebSession.expires_at < utcnow()))
    return token, row


def session_for(s: Session, token: str) -> tuple[WebSession, Labeler] | None:
    row = s.get(WebSession, token_hash(token))
    if row is None or row.expires_at < utcnow():
        return None
    lab = s.get(Labeler, row.labeler_id)
    return (row, lab) if lab is not None and lab.active else None


def end_session(s: Session, token: str) -> None:
    s.execute(delete(WebSession).where(WebSession.id == token_hash(token)))


def end_sessions(s: Session, labeler_id: int) -> None:
    s.execute(delete(WebSession).where(WebSession.labeler_id == labeler_id))
