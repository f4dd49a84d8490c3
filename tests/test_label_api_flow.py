"""The JSON API's share of the labeler's flow (issue 14, item 4), on SQLite and PostgreSQL:
submitting the stored answer again under a new client id is "already saved" (200 with the
stored label) rather than a 409; another answer to an answered item is a 409 that points to the
revise endpoint; `POST /api/assignments/ID/revise` replaces one's own answer until it is
reviewed, keeping the replaced answer as a `LabelRevision`."""

from __future__ import annotations

import pytest
from label_fixtures import Api, make_api
from sqlalchemy import select

from coachlm.feedback import accounts, review
from coachlm.feedback.tables import Label, LabelRevision


@pytest.fixture()
def api(store_url) -> Api:
    a = make_api(store_url)
    yield a
    a.store.close()


def _post(api: Api, aid: int, what: str, client_id: str, answer: dict):
    return api.client.post(f"/api/assignments/{aid}/{what}", headers=api.labeler,
                           json={"client_id": client_id, "answer": answer})


def _labels(api: Api) -> list[Label]:
    with api.store.read() as s:
        return list(s.scalars(select(Label).order_by(Label.id)))


def test_the_same_answer_under_a_new_client_id_is_already_saved(api):
    aid = api.next_of_kind("comparison")["id"]
    first = _post(api, aid, "label", "tab-one-0001", {"choice": "first", "margin": 2})
    assert first.status_code == 201
    again = _post(api, aid, "label", "tab-two-0002", {"choice": "first", "margin": 2})
    assert again.status_code == 200, again.text
    assert again.json() == {"label_id": first.json()["label_id"], "created": False,
                            "already_saved": True}
    other = _post(api, aid, "label", "tab-two-0003", {"choice": "second", "margin": 2})
    assert other.status_code == 409 and f"/api/assignments/{aid}/revise" in other.json()["error"]
    (label,) = _labels(api)
    assert label.client_id == "tab-one-0001"


def test_revise_own_label_until_reviewed_keeping_the_old_answer(api):
    aid = api.next_of_kind("rating")["id"]
    assert _post(api, aid, "revise", "early-0001", {"score": 3}).status_code == 409  # no answer yet
    first = _post(api, aid, "label", "rate-0001", {"score": 3, "critique": "meh"})
    r = _post(api, aid, "revise", "rate-0002", {"score": 6, "critique": "fine on reflection"})
    assert r.status_code == 200 and r.json() == {"label_id": first.json()["label_id"],
                                                 "revised": True}
    assert _post(api, aid, "revise", "rate-0002", {"score": 6, "critique": "fine on reflection"}
                 ).json()["revised"] is False  # a retry changes nothing
    shown = api.client.get(f"/api/assignments/{aid}", headers=api.labeler).json()
    assert shown["answer"]["score"] == 6
    (label,) = _labels(api)
    with api.store.write() as s:
        (old,) = s.scalars(select(LabelRevision).where(LabelRevision.label_id == label.id))
        assert old.answer["score"] == 3 and old.client_id == "rate-0001"
        review.add_review(s, accounts.get_labeler(s, "root"), label.id, "accept")
    late = _post(api, aid, "revise", "rate-0003", {"score": 1})
    assert late.status_code == 409 and "reviewed" in late.json()["error"]


def test_revise_is_only_for_ones_own_assignments(api):
    aid = api.next_of_kind("comparison")["id"]
    _post(api, aid, "label", "mine-0001", {"choice": "tie"})
    r = api.client.post(f"/api/assignments/{aid}/revise", headers=api.admin,
                        json={"client_id": "theirs-0001", "answer": {"choice": "first"}})
    assert r.status_code == 404
