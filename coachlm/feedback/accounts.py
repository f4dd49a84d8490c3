"""Labelers, passwords, API tokens and browser sessions.

Passwords are hashed with scrypt (Percival, 2009; RFC 7914), a deliberately slow, memory-hard
hash, with a random salt per password. API tokens and session tokens are 256-bit random
strings: only their SHA-256 is stored (a fast hash is enough for a random secret, and a leaked
database then holds no usable token). Tokens are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from coachlm.feedback.db import StoreError
from coachlm.feedback.tables import ROLES, Labeler, WebSession, utcnow

# scrypt cost: N=2^14, r=8 uses 16 MiB and ~50 ms per hash, OWASP's minimum recommendation.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 8


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        algo, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(expected))
    except ValueError:
        return False
    return algo == "scrypt" and hmac.compare_digest(got, expected)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise StoreError(f"role must be one of {ROLES}, got {role!r}")


def create_labeler(s: Session, name: str, password: str | None = None, role: str = "labeler",
                   cost_per_label: float = 0.0, source: str = "human") -> Labeler:
    """A new labeler; without a password it cannot sign in (API token or imported labels only)."""
    _check_role(role)
    name = name.strip()
    if not name or len(name) > 100:
        raise StoreError("a labeler name must be 1 to 100 characters")
    if s.scalar(select(Labeler).where(Labeler.name == name)) is not None:
        raise StoreError(f"labeler {name!r} already exists")
    if password is not None and len(password) < MIN_PASSWORD:
        raise StoreError(f"a password needs at least {MIN_PASSWORD} characters")
    lab = Labeler(name=name, role=role, source=source, cost_per_label=cost_per_label,
                  password_hash=hash_password(password) if password is not None else None)
    s.add(lab)
    s.flush()
    return lab


def get_labeler(s: Session, name: str) -> Labeler:
    lab = s.scalar(select(Labeler).where(Labeler.name == name))
    if lab is None:
        raise StoreError(f"no labeler named {name!r}")
    return lab


def update_labeler(s: Session, name: str, *, password: str | None = None, role: str | None = None,
                   cost_per_label: float | None = None, active: bool | None = None) -> Labeler:
    lab = get_labeler(s, name)
    if password is not None:
        if len(password) < MIN_PASSWORD:
            raise StoreError(f"a password needs at least {MIN_PASSWORD} characters")
        lab.password_hash = hash_password(password)
    if role is not None:
        _check_role(role)
        lab.role = role
    if cost_per_label is not None:
        lab.cost_per_label = cost_per_label
    if active is not None:
        lab.active = active
        if not active:  # a deactivated labeler is signed out everywhere
            s.execute(delete(WebSession).where(WebSession.labeler_id == lab.id))
    return lab


def authenticate(s: Session, name: str, password: str) -> Labeler | None:
    lab = s.scalar(select(Labeler).where(Labeler.name == name))
    if lab is None:
        # Hash anyway so that response time does not reveal which names exist.
        verify_password(password, "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 43 + "=")
        return None
    if not lab.active or not verify_password(password, lab.password_hash):
        return None
    return lab


def issue_token(s: Session, name: str) -> str:
    """A new API token for `name` (replacing any old one). Shown once; only its hash is kept."""
    lab = get_labeler(s, name)
    token = secrets.token_urlsafe(32)
    lab.token_hash = token_hash(token)
    return token


def labeler_by_token(s: Session, token: str) -> Labeler | None:
    lab = s.scalar(select(Labeler).where(Labeler.token_hash == token_hash(token)))
    return lab if lab is not None and lab.active else None


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
