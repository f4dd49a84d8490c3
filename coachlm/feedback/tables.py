"""The feedback store's tables (SQLAlchemy 2 ORM). The schema itself is created by the Alembic
migrations in `coachlm/feedback/migrations/`, which a test keeps identical to these models.

Shape of the data: a project holds prompts; a prompt holds responses (with the model and version
that produced them); a task is one item to label (a comparison of 2 responses, a ranking of K,
a rating of 1, or an ideal response to write/edit) and wants `n_labels` labels; an assignment
gives a task to one labeler (never twice: unique (task, labeler)) in one of the task's
`n_labels` slots (unique (task, slot), which makes concurrent claims safe); a label is the
answer to an assignment, keyed by a client-generated id so that a retried submit never counts
twice. Times are naive UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("labeler", "reviewer", "admin")
TASK_KINDS = ("comparison", "ranking", "rating", "demonstration")
PENDING, DONE, SKIPPED, EXPIRED = "pending", "done", "skipped", "expired"
MAX_ID = 2**63 - 1  # the largest id an integer column holds (larger ids cannot exist)
DEFAULT_TTL_S = 3600  # a pending assignment is given to someone else after this long


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Labeler(Base):
    """A person (or an AI/simulated labeler imported with its labels) who labels."""

    __tablename__ = "labelers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="labeler")
    source: Mapped[str] = mapped_column(String(16), default="human")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    cost_per_label: Mapped[float] = mapped_column(default=0.0)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    rating_scale: Mapped[int] = mapped_column(default=7)
    flags: Mapped[list[Any]] = mapped_column(default=list)
    # Seconds a claimed assignment stays reserved for its labeler (0: for ever).
    assignment_ttl_s: Mapped[int] = mapped_column(default=DEFAULT_TTL_S,
                                                  server_default=text(str(DEFAULT_TTL_S)))
    guidance: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))  # see guidance.py
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Guideline(Base):
    """Labeling guidelines, versioned: a new text is a new version, old versions are kept."""

    __tablename__ = "guidelines"
    __table_args__ = (UniqueConstraint("project_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    version: Mapped[int]
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Prompt(Base):
    """A conversation ending in a user turn; `key` (a hash of it) dedupes imports."""

    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("project_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    messages: Mapped[list[Any]]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    responses: Mapped[list[Response]] = relationship(order_by="Response.id")


class Response(Base):
    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("prompt_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(200))
    model_version: Mapped[str | None] = mapped_column(String(200))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Task(Base):
    """One item to label. `response_ids` is the canonical order (a, b, ... of the record);
    `gold` is the known answer of a gold item, in the same form as a label's answer.
    `filled` counts the assignments holding one of its `n_labels` slots, so that finding a task
    with a free slot is a column test rather than a count per task."""

    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("project_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    response_ids: Mapped[list[Any]]
    n_labels: Mapped[int] = mapped_column(default=1)
    filled: Mapped[int] = mapped_column(default=0)  # slots held (kept by assign.py, atomically)
    gold: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    prompt: Mapped[Prompt] = relationship()


class Assignment(Base):
    """A task given to one labeler. `shown_order[i]` is the canonical index of the response
    shown in position i (responses are shown blind, in random order; the order is kept so that
    position bias can be measured). `slot` is None for a skipped, expired or imported
    assignment."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("task_id", "labeler_id"), UniqueConstraint("task_id", "slot"),
                      Index("ix_assignments_labeler_status", "labeler_id", "status"),
                      Index("ix_assignments_status_created", "status", "created_at"))
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"))
    slot: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    shown_order: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    done_at: Mapped[datetime | None]
    skip_reason: Mapped[str | None] = mapped_column(String(200))
    task: Mapped[Task] = relationship()
    labeler: Mapped[Labeler] = relationship()


class Label(Base):
    """The answer to an assignment, in canonical response order (see `labels.py`)."""

    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"),
                                               unique=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"))
    answer: Mapped[dict[str, Any]]
    time_spent_s: Mapped[float | None]
    cost: Mapped[float] = mapped_column(default=0.0)
    guideline_version: Mapped[int | None]  # the guidelines in force when it was submitted
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    assignment: Mapped[Assignment] = relationship()


class WebSession(Base):
    """A signed-in browser: `id` is the SHA-256 of the cookie's random token (never the token)."""

    __tablename__ = "web_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"))
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class SignInThrottle(Base):
    """Failed sign-ins per key (a hash of name and address, or of the address alone), kept in
    the database so that every server process sees the same counts (see `throttle.py`)."""

    __tablename__ = "sign_in_throttle"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    last_at: Mapped[datetime] = mapped_column(index=True)
    blocked_until: Mapped[datetime]


class LabelRevision(Base):
    """An answer a labeler replaced by revising their label: kept for audit, never exported."""

    __tablename__ = "label_revisions"
    id: Mapped[int] = mapped_column(primary_key=True)
    label_id: Mapped[int] = mapped_column(ForeignKey("labels.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(String(64))
    answer: Mapped[dict[str, Any]]
    time_spent_s: Mapped[float | None]
    created_at: Mapped[datetime]  # when the replaced answer had been given
    superseded_at: Mapped[datetime] = mapped_column(default=utcnow)


class Review(Base):
    """A reviewer's verdict on a label: accept, reject (with a note the labeler sees), correct
    (`answer` replaces the label's in the export), or adjudicate (`answer` is the item's final
    answer: it alone is exported for the task). Labels under review are no longer revisable."""

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    label_id: Mapped[int] = mapped_column(ForeignKey("labels.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"))
    verdict: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
    answer: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GuidelineRead(Base):
    """The latest guidelines version a labeler has seen in a project ("changed since you read")."""

    __tablename__ = "guideline_reads"
    __table_args__ = (UniqueConstraint("labeler_id", "project_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    version: Mapped[int]
    read_at: Mapped[datetime] = mapped_column(default=utcnow)
