"""Guidance shown where the decision is made: per-project rating anchors, flag descriptions,
skip reasons and a per-labeler quota (stored as `Project.guidance`), and which guidelines
version each labeler last read, so that a changed text is shown open and marked as changed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from coachlm.feedback import items
from coachlm.feedback.db import StoreError
from coachlm.feedback.tables import Guideline, GuidelineRead, Project

DEFAULT_FLAG_DESCRIPTIONS = {
    "harmful": "could hurt someone or help them hurt others",
    "fails_instruction": "does not do what the prompt asked",
    "made_up_facts": "states something false or invents a source",
    "unhelpful": "answers, but leaves the person no better off",
    "too_long": "padded or repetitive; could say the same in far fewer words",
}
DEFAULT_SKIP_REASONS = ("I cannot judge this topic", "The prompt or responses are broken",
                        "Offensive content I prefer not to read", "Other")


@dataclass(frozen=True)
class Guidance:
    """`anchors` maps a rating score (as text) to what it means; `quota` is labels per labeler
    (0: none)."""

    anchors: dict[str, str] = field(default_factory=dict)
    flag_descriptions: dict[str, str] = field(default_factory=dict)
    skip_reasons: tuple[str, ...] = DEFAULT_SKIP_REASONS
    quota: int = 0


def _default_anchors(scale: int) -> dict[str, str]:
    return {"1": "unusable: wrong, harmful or off-topic", str((scale + 1) // 2):
            "acceptable: does the task with clear flaws", str(scale): "excellent: nothing to improve"}


def get(project: Project) -> Guidance:
    raw = dict(project.guidance or {})
    g = Guidance(anchors=raw.get("anchors") or _default_anchors(project.rating_scale),
                 flag_descriptions={**DEFAULT_FLAG_DESCRIPTIONS, **(raw.get("flag_descriptions") or {})},
                 skip_reasons=tuple(raw.get("skip_reasons") or DEFAULT_SKIP_REASONS),
                 quota=int(raw.get("quota") or 0))
    return g


def update(project: Project, changes: Mapping[str, Any]) -> Guidance:
    """Set some of the guidance fields (a key that is not a field is an error)."""
    known = set(Guidance.__dataclass_fields__)
    bad = sorted(set(changes) - known)
    if bad:
        raise StoreError(f"unknown guidance field {bad[0]!r}; fields are {sorted(known)}")
    merged = {**(project.guidance or {}), **{k: v for k, v in changes.items()}}
    if "anchors" in changes:
        for score in merged["anchors"]:
            if not str(score).isdigit() or not 1 <= int(score) <= project.rating_scale:
                raise StoreError(f"anchor {score!r} is not a score from 1 to {project.rating_scale}")
    if "flag_descriptions" in changes and set(changes["flag_descriptions"]) - set(project.flags):
        raise StoreError(f"flag descriptions must name flags of the project: {project.flags}")
    if int(merged.get("quota") or 0) < 0:
        raise StoreError("quota must be 0 (none) or more")
    if "skip_reasons" in merged:
        merged["skip_reasons"] = [str(r)[:200] for r in merged["skip_reasons"]]
    project.guidance = merged
    return get(project)


def as_dict(g: Guidance) -> dict[str, Any]:
    return asdict(g)


def changed_since_read(s: Session, labeler_id: int, project: Project) -> tuple[Guideline | None,
                                                                              str]:
    """(the guidelines in force, "" if this labeler has read this version, else "new" (never
    read any) or "changed" (read an older version))."""
    g = items.guidelines(s, project)
    if g is None:
        return None, ""
    read = s.scalar(select(GuidelineRead.version).where(GuidelineRead.labeler_id == labeler_id,
                                                        GuidelineRead.project_id == project.id))
    return g, "new" if read is None else "changed" if read < g.version else ""


def mark_read(s: Session, labeler_id: int, project: Project) -> None:
    """Record that the labeler has seen the guidelines in force (shown open on their page)."""
    g = items.guidelines(s, project)
    if g is None:
        return
    row = s.scalar(select(GuidelineRead).where(GuidelineRead.labeler_id == labeler_id,
                                               GuidelineRead.project_id == project.id))
    if row is None:
        s.add(GuidelineRead(labeler_id=labeler_id, project_id=project.id, version=g.version))
    elif row.version < g.version:
        row.version = g.version

