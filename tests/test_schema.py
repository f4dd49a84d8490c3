"""The feedback record schema: JSON round trips, derived pairs, and errors that name the field."""

import pytest

from coachlm.data.schema import (
    KINDS,
    Comparison,
    Demonstration,
    Message,
    PromptRecord,
    Ranking,
    Rating,
    Response,
    Sample,
    SchemaError,
    as_prompt,
    from_dict,
    to_dict,
)

CHAT = as_prompt([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "5."},
    {"role": "user", "content": "And times 4?"},
])


def one_of_each():
    """One record of every kind, with every optional field set somewhere."""
    p = as_prompt("Write a haiku.")
    return [
        PromptRecord(prompt=p, id="p1", meta={"split": "train", "tags": ["a", 1, None]}),
        Sample(prompt=CHAT, id="s1", response=Response("20.", "tiny", "v3")),
        Demonstration(prompt=p, id="d1", labeler="ann", time_spent_s=12.5,
                      response=Response("Snow on the pine\n...")),
        Comparison(prompt=CHAT, id="c1", a=Response("20."), b=Response("21.", "m", "1"),
                   choice="b", margin=2.0, shown_order="ba", source="ai", labeler="judge"),
        Ranking(prompt=p, id="r1", responses=(Response("x"), Response("y"), Response("z")),
                ranks=(2, None, 1), source="simulated"),
        Rating(prompt=CHAT, id="t1", response=Response("20."), score=6, scale=7,
               flags=("too_long", "unsafe"), critique="fine", created_at="2024-01-01T00:00:00+00:00"),
    ]


def test_every_kind_round_trips_through_its_json_form():
    records = one_of_each()
    assert {type(r) for r in records} == set(KINDS.values())
    for record in records:
        assert from_dict(to_dict(record)) == record


def test_prompt_json_form_single_turn_is_a_string_multi_turn_a_list():
    d = to_dict(one_of_each()[0])
    assert d["kind"] == "prompt" and d["prompt"] == "Write a haiku."
    d = to_dict(one_of_each()[1])
    assert d["prompt"][0] == {"role": "system", "content": "Be brief."} and len(d["prompt"]) == 4
    assert from_dict(d).prompt_text == "And times 4?"
    assert CHAT[2] == Message("assistant", "5.")


def test_comparison_chosen_rejected():
    a, b, p = Response("A"), Response("B"), as_prompt("q")
    assert Comparison(prompt=p, a=a, b=b, choice="a").chosen_rejected() == (a, b)
    assert Comparison(prompt=p, a=a, b=b, choice="b").chosen_rejected() == (b, a)
    assert Comparison(prompt=p, a=a, b=b, choice="tie").chosen_rejected() is None
    assert Comparison(prompt=p, a=a, b=b, choice="both_bad").chosen_rejected() is None


def test_ranking_pairs_skip_ties_and_unranked():
    r = Ranking(prompt=as_prompt("q"), responses=tuple(Response(t) for t in "wxyz"),
                ranks=(2, 1, None, 2))
    # rank 1 (x) beats both rank-2 responses; w and z tie; y is unranked.
    assert sorted(r.pairs()) == [(1, 0), (1, 3)]


BASE = {"kind": "comparison", "prompt": "q", "a": "A", "b": "B", "choice": "a"}


@pytest.mark.parametrize("change, field, words", [
    ({"kind": "vote"}, "kind", "must be one of"),
    ({"choice": "c"}, "choice", "must be one of"),
    ({"color": "red"}, "color", "unknown field"),
    ({"a": 3}, "a", "must be a string or an object"),
    ({"a": {"text": "A", "score": 1}}, "a.score", "unknown field"),
    ({"prompt": []}, "prompt", "non-empty list"),
    ({"prompt": [{"role": "bot", "content": "x"}]}, "prompt[0].role", "must be one of"),
    ({"prompt": [{"role": "user", "content": 5}]}, "prompt[0].content", "must be a string"),
    ({"margin": "big"}, "margin", "number"),
    ({"shown_order": "ca"}, "shown_order", "'ab', 'ba'"),
    ({"source": "crowd"}, "source", "must be one of"),
    ({"time_spent_s": -1}, "time_spent_s", ">= 0"),
    ({"id": 7}, "id", "must be a string"),
    ({"meta": [1]}, "meta", "must be an object"),
])
def test_comparison_errors_name_the_field(change, field, words):
    with pytest.raises(SchemaError) as e:
        from_dict({**BASE, **change})
    assert e.value.field == field and words in e.value.message


def test_missing_field_is_named():
    with pytest.raises(SchemaError) as e:
        from_dict({k: v for k, v in BASE.items() if k != "choice"})
    assert (e.value.field, e.value.message) == ("choice", "missing")


@pytest.mark.parametrize("record, field", [
    ({"kind": "ranking", "prompt": "q", "responses": ["x", "y", "z"], "ranks": [1, 2, 0]}, "ranks[2]"),
    ({"kind": "ranking", "prompt": "q", "responses": ["x", "y"], "ranks": [1, True]}, "ranks[1]"),
    ({"kind": "ranking", "prompt": "q", "responses": ["x", "y"], "ranks": [1]}, "ranks"),
    ({"kind": "ranking", "prompt": "q", "responses": ["x"], "ranks": [1]}, "responses"),
    ({"kind": "rating", "prompt": "q", "response": "r", "score": 8}, "score"),
    ({"kind": "rating", "prompt": "q", "response": "r", "score": 0, "scale": 5}, "score"),
    ({"kind": "rating", "prompt": "q", "response": "r", "score": 1, "scale": 1}, "scale"),
    ({"kind": "rating", "prompt": "q", "response": "r", "score": 1, "flags": [1]}, "flags"),
])
def test_ranking_and_rating_errors(record, field):
    with pytest.raises(SchemaError) as e:
        from_dict(record)
    assert e.value.field == field
    assert str(e.value).startswith(field + ": ")


def test_score_bound_follows_scale():
    assert from_dict({"kind": "rating", "prompt": "q", "response": "r", "score": 9,
                      "scale": 10}).score == 9
    with pytest.raises(SchemaError, match=r"score: must be an integer in 1\.\.7"):
        from_dict({"kind": "rating", "prompt": "q", "response": "r", "score": 9})
