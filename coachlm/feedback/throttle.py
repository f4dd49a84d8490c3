"""Sign-in throttling, shared by every server process because its state is in the database.

Failures are counted per (account name, client address) and per address alone. A key may fail
`free` times; after that each further failure doubles its wait (1 s, 2 s, 4 s, ... up to
`max_s`): exponential back-off, as NIST SP 800-63B (section 5.2.2) asks for, instead of a
lock-out. Because the main key includes the address, someone guessing an admin's password from
one address slows only themselves: the admin signs in from their own address as usual. The
per-address key (with `address_factor` times as many free failures) slows one address spraying
many names. Keys are SHA-256 hashes, so an attacker's long names cost no storage; rows are
forgotten `window_s` after their last failure, which bounds the table by the failure rate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from coachlm.feedback.tables import SignInThrottle, utcnow


@dataclass(frozen=True)
class ThrottleConfig:
    free: int = 5  # failures per (name, address) before the back-off starts
    base_s: float = 1.0  # the first wait; each further failure doubles it
    max_s: float = 300.0
    address_factor: int = 5  # per address alone: this many times `free`
    window_s: float = 900.0  # a key is forgotten this long after its last failure

    def __post_init__(self) -> None:
        if self.free < 1 or self.base_s <= 0 or self.max_s < self.base_s or self.window_s <= 0:
            raise ValueError("throttle: free >= 1, 0 < base_s <= max_s and window_s > 0")


def _hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def keys(name: str, address: str) -> dict[str, int]:
    """{key: free-failure multiplier}: the (name, address) pair and the address alone."""
    return {_hash("account", name.strip().casefold()[:200], address): 1,
            _hash("address", address): 0}


def wait_s(s: Session, cfg: ThrottleConfig, name: str, address: str,
           now: datetime | None = None) -> float:
    """Seconds until this name may try again from this address (0: now)."""
    now = now or utcnow()
    rows = s.scalars(select(SignInThrottle).where(
        SignInThrottle.key.in_(list(keys(name, address)))))
    waits = [(r.blocked_until - now).total_seconds() for r in rows]
    return max([w for w in waits if w > 0], default=0.0)


def failed(s: Session, cfg: ThrottleConfig, name: str, address: str) -> None:
    """Count one failed sign-in (and forget keys idle for longer than the window)."""
    now = utcnow()
    s.execute(delete(SignInThrottle).where(
        SignInThrottle.last_at < now - timedelta(seconds=cfg.window_s)))
    for key, per_account in keys(name, address).items():
        free = cfg.free if per_account else cfg.free * cfg.address_factor
        row = s.get(SignInThrottle, key, with_for_update=True)
        if row is None:
            row = SignInThrottle(key=key, failures=0, last_at=now, blocked_until=now)
            s.add(row)
        row.failures += 1
        row.last_at = now
        over = row.failures - free
        if over >= 0:
            row.blocked_until = now + timedelta(seconds=min(cfg.base_s * 2**min(over, 30),
                                                            cfg.max_s))
        s.flush()


def succeeded(s: Session, name: str, address: str) -> None:
    """A right password clears this (name, address) pair (the address key keeps its count)."""
    pair = next(iter(keys(name, address)))
    s.execute(delete(SignInThrottle).where(SignInThrottle.key == pair))
