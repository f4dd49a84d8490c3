"""What one assignment page shows, read in one transaction: the assignment as the JSON API shows
it (`feedback.views`: the conversation, the responses in the assignment's blind order, the
labeler's answer in shown terms) plus whether the answer can still be revised, the guidelines
(and whether they changed since this labeler read them), the project's rating anchors and flag
descriptions, progress toward the quota, and the previous item."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from coachlm.feedback import assign, flow, guidance
from coachlm.feedback.tables import Assignment, Guideline, Label, Labeler, Project, Review
from coachlm.feedback.views import AssignmentView, assignment_view
from coachlm.web.deps import User


@dataclass(frozen=True)
class TaskView(AssignmentView):
    done: int
    available: int
    quota: int
    revisable: bool  # answered, and not reviewed yet
    prev_id: int | None
    review_note: str
    guideline: Guideline | None
    guideline_changed: str  # "", "new" or "changed" (since this labeler last read them)
    guide: guidance.Guidance

    def with_draft(self, draft: dict[str, Any]) -> TaskView:
        """The same page showing an answer that was posted but not stored (kept, not lost)."""
        return replace(self, answer=draft)


def _review_note(s: Session, assignment_id: int) -> tuple[bool, str]:
    label_id = s.scalar(select(Label.id).where(Label.assignment_id == assignment_id))
    if label_id is None:
        return False, ""
    last = s.scalar(select(Review).where(Review.label_id == label_id)
                    .order_by(Review.id.desc()).limit(1))
    if last is None:
        return False, ""
    return True, last.note if last.verdict == "reject" else ""


def task_view(s: Session, user: User, assignment_id: int) -> TaskView:
    base = assignment_view(s, user.id, assignment_id)  # not found unless it is this labeler's
    lab, project = s.get(Labeler, user.id), s.get(Project, base.project_id)
    is_reviewed, note = _review_note(s, assignment_id)
    prog = assign.progress(s, lab, project)
    g, changed = guidance.changed_since_read(s, lab.id, project)
    guide = guidance.get(project)
    return TaskView(**vars(base), done=prog.done, available=prog.available, quota=guide.quota,
                    revisable=base.answer is not None and not is_reviewed,
                    prev_id=flow.previous(s, lab, s.get(Assignment, assignment_id)),
                    review_note=note, guideline=g, guideline_changed=changed, guide=guide)
