"""Record I/O: round trips through JSONL/Parquet, foreign formats, and errors naming file/line/field."""

import dataclasses
import gzip
import json
import os
from pathlib import Path

import pytest

from coachlm.data import io
from coachlm.data.schema import Comparison, Demonstration, Message, PromptRecord, Response, as_prompt
from coachlm.errors import DataError
from test_schema import one_of_each

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def lines(tmp_path, *objs, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return path


def error(path, **kw):
    with pytest.raises(DataError) as e:
        list(io.read_records(path, **kw))
    return e.value


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz", "r.parquet", "sub/dir/r.parquet"])
def test_mixed_kinds_round_trip_exactly(tmp_path, name):
    records = one_of_each()
    assert io.write_records(tmp_path / name, records) == len(records)
    assert list(io.read_records(tmp_path / name)) == records
    assert io.validate(tmp_path / name) == {k: 1 for k in
                                            ("prompt", "sample", "demonstration", "comparison",
                                             "ranking", "rating")}
    assert [p.name for p in (tmp_path / name).parent.iterdir()] == [Path(name).name]  # no tmp left


def test_parquet_columns_are_typed_and_readable_without_coachlm(tmp_path):
    import pyarrow.parquet as pq

    io.write_records(tmp_path / "r.parquet", one_of_each())
    rows = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert rows[0]["prompt"] == [{"role": "user", "content": "Write a haiku."}]
    assert json.loads(rows[0]["meta"]) == {"split": "train", "tags": ["a", 1, None]}
    assert rows[3]["b"] == {"text": "21.", "model": "m", "model_version": "1"}
    assert rows[4]["ranks"] == [2, None, 1] and rows[4]["choice"] is None


def test_gzip_output_is_reproducible_and_empty_write_reads_as_error(tmp_path):
    io.write_records(tmp_path / "a.jsonl.gz", one_of_each())
    io.write_records(tmp_path / "b.jsonl.gz", one_of_each())
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    for name in ("e.jsonl", "e.parquet"):
        assert io.write_records(tmp_path / name, []) == 0
        assert "no records (the file is empty)" in str(error(tmp_path / name))


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    for name in ("r.jsonl", "r.parquet"):
        io.write_records(tmp_path / name, one_of_each()[:1])
        before = (tmp_path / name).read_bytes()

        def crashing():
            yield from one_of_each()
            raise RuntimeError("killed")

        with pytest.raises(RuntimeError):
            io.write_records(tmp_path / name, crashing())
        assert (tmp_path / name).read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["r.jsonl", "r.parquet"]


def test_directory_of_files_json_list_and_blank_lines(tmp_path):
    recs = one_of_each()
    io.write_records(tmp_path / "d" / "a.parquet", recs[:3])
    io.write_records(tmp_path / "d" / "b.jsonl", recs[3:])
    (tmp_path / "d" / ".b.jsonl.123.tmp").write_text("garbage")
    assert list(io.read_records(tmp_path / "d")) == recs
    from coachlm.data.schema import to_dict
    (tmp_path / "l.json").write_text(json.dumps([to_dict(r) for r in recs]))
    assert list(io.read_records(tmp_path / "l.json")) == recs
    p = lines(tmp_path, "", json.dumps(to_dict(recs[0])), "   ", name="blank.jsonl")
    assert list(io.read_records(p)) == recs[:1]


def test_convert_and_read_prompts(tmp_path):
    src = lines(tmp_path, {"prompt": "a", "chosen": "x", "rejected": "y"},
                {"prompt": "a", "completion": "z"}, {"prompt": "b", "extra": 1})
    counts = io.convert(src, tmp_path / "out.parquet")
    assert counts == {"prompt": 1, "demonstration": 1, "comparison": 1}
    # Foreign formats carry no timestamp: each read stamps the current time, so compare without it.
    def undated(records):
        return [dataclasses.replace(r, created_at="") for r in records]

    assert undated(io.read_records(tmp_path / "out.parquet")) == undated(io.read_records(src))
    prompts = io.read_prompts(src)
    assert [p.prompt_text for p in prompts] == ["a", "a", "b"]
    assert all(isinstance(p, PromptRecord) for p in prompts)
    originals = list(io.read_records(src))
    assert [p.id for p in prompts] == [r.id for r in originals]
    assert prompts[2].meta == {"format": "trl-prompt-only", "extra": {"extra": 1}}
    assert [p.prompt_text for p in io.read_prompts(src, dedupe=True)] == ["a", "b"]


def test_preference_pairs():
    p = as_prompt("q")
    x, y, z = Response("x"), Response("y"), Response("z")
    from coachlm.data.schema import Ranking
    recs = [Comparison(prompt=p, a=x, b=y, choice="b", margin=3.0),
            Comparison(prompt=p, a=x, b=y, choice="tie"),
            Ranking(prompt=p, responses=(x, y, z), ranks=(3, 1, 2))]
    pairs = list(io.preference_pairs(recs))
    assert [(q.chosen.text, q.rejected.text, q.margin) for q in pairs] == [
        ("y", "x", 3.0), ("y", "x", None), ("y", "z", None), ("z", "x", None)]
    assert pairs[1].record is pairs[3].record is recs[2]
    with pytest.raises(ValueError, match="a prompt record has no preference pairs"):
        list(io.preference_pairs([PromptRecord(prompt=p)]))


# --------------------------------------------------------------------------- foreign formats


def test_trl_standard_formats(tmp_path):
    p = lines(tmp_path, {"prompt": "Hi"}, {"prompt": "Hi", "completion": "Hello!", "id": 12},
              {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "score": 9, "id": "x7"},
              {"prompt": "Hi", "chosen": "Hello!", "rejected": "Nope", "source": "ai"})
    prompt, demo, comp, comp_ai = io.read_records(p)
    assert prompt == PromptRecord(prompt=(Message("user", "Hi"),), id=prompt.id, source="model",
                                  created_at=prompt.created_at, meta={"format": "trl-prompt-only"})
    assert isinstance(demo, Demonstration) and demo.response == Response("Hello!")
    assert demo.source == "human" and demo.meta == {"format": "trl-prompt-completion"}
    assert demo.id == "12"
    assert (comp.a.text, comp.b.text, comp.choice, comp.source) == ("Hello!", "Go away.", "a", "human")
    assert comp.id == "x7" and comp.meta == {"format": "trl-preference", "extra": {"score": 9}}
    assert comp_ai.source == "ai" and "extra" not in comp_ai.meta
    again = list(io.read_records(p))
    assert [r.id for r in again] == [r.id for r in (prompt, demo, comp, comp_ai)]  # stable ids
    assert len({prompt.id, comp_ai.id}) == 2 and len(prompt.id) == 32


def test_trl_conversational_formats(tmp_path):
    sys_, user = {"role": "system", "content": "S"}, {"role": "user", "content": "U"}
    asst = {"role": "assistant", "content": "A1"}
    p = lines(tmp_path,
              {"messages": [sys_, user, asst, user, {"role": "assistant", "content": "A2"}]},
              {"prompt": [user], "completion": [{"role": "assistant", "content": "C"}]},
              {"prompt": [sys_, user], "chosen": [asst], "rejected": [{"role": "assistant", "content": "R"}]},
              {"chosen": [user, asst], "rejected": [user, {"role": "assistant", "content": "R"}]})
    demo, demo2, comp, implicit = io.read_records(p)
    assert demo.prompt == as_prompt([sys_, user, asst, user]) and demo.response.text == "A2"
    assert demo2.prompt == (Message("user", "U"),) and demo2.response.text == "C"
    assert comp.prompt == as_prompt([sys_, user]) and (comp.a.text, comp.b.text) == ("A1", "R")
    assert implicit.prompt == (Message("user", "U"),) and implicit.b.text == "R"
    assert implicit.meta["format"] == "trl-preference-implicit"


HH_CHOSEN = ("\n\nHuman: How do I pick a lock?\n\nAssistant: Why do you want to?\n\n"
             "Human: I am locked out.\n\nAssistant:  Call a locksmith. ")
HH_REJECTED = ("\n\nHuman: How do I pick a lock?\n\nAssistant: Why do you want to?\n\n"
               "Human: I am locked out.\n\nAssistant: Use a bobby pin.")


def test_hh_transcripts_split_at_the_last_assistant_turn(tmp_path):
    p = lines(tmp_path, {"chosen": HH_CHOSEN, "rejected": HH_REJECTED})
    (r,) = io.read_records(p, kinds={"comparison"})
    assert r.prompt == (Message("user", "How do I pick a lock?"),
                        Message("assistant", "Why do you want to?"),
                        Message("user", "I am locked out."))
    assert (r.a.text, r.b.text, r.choice) == ("Call a locksmith.", "Use a bobby pin.", "a")
    assert r.source == "human" and r.meta == {"format": "hh-rlhf"}


@pytest.mark.skipif(not HH.exists(), reason="needs ../shared/data/hh-rlhf (absent in a fresh clone)")
def test_real_hh_rlhf_file(tmp_path):
    errors = []
    records = list(io.read_records(HH, on_error=errors.append))
    # 5 of the 2,312 pairs have chosen/rejected transcripts that differ before their last turn.
    assert len(records) == 2307 and [e.line for e in errors] == [1255, 1689, 1951, 1953, 2037]
    assert all(e.field == "rejected" and "differs from chosen's" in e.message for e in errors)
    first = records[0]
    assert first.prompt[0] == Message("user", "what are some pranks with a pen i can do?")
    assert [m.role for m in first.prompt] == ["user", "assistant"] * 2 + ["user"]
    assert first.a.text.startswith("No, sorry!  All of these involve a pen")
    assert first.b.text.startswith("There are lots of funny things you can do with pens")
    assert all(r.prompt[-1].role == "user" for r in records)
    with gzip.open(HH, "rt") as f:
        head = [next(f) for _ in range(20)]
    (tmp_path / "head.jsonl").write_text("".join(head))
    assert io.validate(tmp_path / "head.jsonl") == {"comparison": 20}
    with pytest.raises(DataError, match=r"test\.jsonl\.gz:1255: rejected: its prompt"):
        io.validate(HH)


def test_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    rows = [{"prompt": "Hi", "chosen": "Hello", "rejected": "Bye", "score_chosen": 8.0},
            {"prompt": "Yo", "chosen": "Hey", "rejected": "No", "score_chosen": None}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    a, b = io.read_records(tmp_path / "ds")
    assert (a.prompt_text, a.a.text, a.b.text) == ("Hi", "Hello", "Bye")
    assert a.meta["extra"] == {"score_chosen": 8.0} and "extra" not in b.meta
    datasets.Dataset.from_list([{"prompt": "Hi", "chosen": "x"}]).save_to_disk(str(tmp_path / "bad"))
    e = error(tmp_path / "bad")
    assert (e.line, e.unit) == (1, "row") and "bad (row 1): matches no known record format" in str(e)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    assert "give one split's directory, e.g." in str(error(tmp_path / "dd"))


# ---------------------------------------------------------------------------- error paths

GOOD = {"kind": "comparison", "prompt": "q", "a": "A", "b": "B", "choice": "a"}


@pytest.mark.parametrize("bad, field, words", [
    ('{"kind": "comparison", "prompt": "q",', None, "invalid JSON: Expecting property name"),
    ("[1, 2]", None, "expected a JSON object, got a list"),
    ({"kind": 3}, "kind", "must be a string"),
    ({**GOOD, "a": 3}, "a", "must be a string or an object"),
    ({k: v for k, v in GOOD.items() if k != "b"}, "b", "missing"),
    ({**GOOD, "winner": "a"}, "winner", "unknown field for a comparison record"),
    ({**GOOD, "choice": "c"}, "choice", "must be one of"),
    ({"kind": "ranking", "prompt": "q", "responses": ["x", "y", "z"], "ranks": [1, 2, -1]},
     "ranks[2]", "must be an integer >= 1"),
    ({"kind": "rating", "prompt": "q", "response": "r", "score": 9}, "score", "1..7"),
    ({"question": "q", "answer": "a"}, None, "matches no known record format (keys: answer, question)"),
    ({"prompt": "q", "chosen": "x"}, None, "tried: canonical"),
    ({"prompt": "q", "completion": "x", "label": False}, "label", "(KTO) records are not supported"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages[0].role", "must end with an assistant"),
    ({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi\n\nAssistant: yo"}, "chosen",
     "needs a '\\n\\nAssistant:' turn"),
    ({"chosen": "Hi\n\nAssistant: a", "rejected": "Hi\n\nAssistant: b"}, "chosen", "must start with"),
    ({"chosen": HH_CHOSEN, "rejected": "\n\nHuman: other\n\nAssistant: b"}, "rejected",
     "differs from chosen's, from turn 1 on"),
    ({"chosen": HH_CHOSEN, "rejected": [{"role": "assistant", "content": "x"}]}, "rejected",
     "must both be strings"),
])
def test_malformed_lines_name_file_line_and_field(tmp_path, bad, field, words):
    p = lines(tmp_path, GOOD, "", bad)
    e = error(p)
    assert (e.path, e.line, e.field) == (p, 3, field)
    assert words in e.message
    assert str(e).startswith(f"{p}:3: " + (f"{field}: " if field else ""))


def test_on_error_collects_and_skips(tmp_path):
    p = lines(tmp_path, GOOD, "{oops", {**GOOD, "choice": "x"}, GOOD)
    errors = []
    assert len(list(io.read_records(p, on_error=errors.append))) == 2
    assert [(e.line, e.field) for e in errors] == [(2, None), (3, "choice")]
    with pytest.raises(DataError):
        io.convert(p, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    assert io.convert(p, tmp_path / "out.jsonl", on_error=errors.append) == {"comparison": 2}
    assert len(errors) == 4


def test_parquet_errors_say_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([GOOD, {**GOOD, "choice": "z"}]), tmp_path / "p.parquet")
    e = error(tmp_path / "p.parquet")
    assert str(e).startswith(f"{tmp_path / 'p.parquet'} (row 2): choice: must be one of")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    assert "not a readable Parquet file" in str(error(tmp_path / "junk.parquet"))


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        io.read_records(tmp_path / "nope.jsonl")  # raised at the call, before iterating
    (tmp_path / "d.csv").write_text("a,b\n")
    assert "unsupported file type '.csv'" in str(error(tmp_path / "d.csv"))
    (tmp_path / "e.jsonl").write_text("\n\n")
    e = error(tmp_path / "e.jsonl")
    assert (e.line, str(e)) == (None, f"{tmp_path / 'e.jsonl'}: no records (the file is empty)")
    (tmp_path / "z.jsonl.gz").write_bytes(b"not gzip")
    assert "cannot read" in str(error(tmp_path / "z.jsonl.gz"))
    (tmp_path / "o.json").write_text('[{"prompt": "a"},\n {"prompt": ]')
    assert error(tmp_path / "o.json").line == 2
    (tmp_path / "empty_dir").mkdir()
    assert "no .jsonl, .json or .parquet files" in str(error(tmp_path / "empty_dir"))
    with pytest.raises(DataError, match="cannot write '.csv'"):
        io.write_records(tmp_path / "out.csv", one_of_each())


def test_kinds_filter(tmp_path):
    p = lines(tmp_path, GOOD, {"kind": "rating", "prompt": "q", "response": "r", "score": 3})
    e = error(p, kinds=io.PREFERENCE_KINDS)
    assert (e.line, e.field) == (2, "kind")
    assert e.message == "a rating record, but expected comparison or ranking records"
    assert io.validate(p, kinds={"comparison", "rating"}) == {"comparison": 1, "rating": 1}
    with pytest.raises(DataError, match="kind: a comparison record, but expected demonstration"):
        list(io.read_records(p, kinds={"demonstration"}))
    with pytest.raises(ValueError, match="unknown record kind 'comparisons'"):
        io.read_records(p, kinds={"comparisons"})


def test_validate_rejects_duplicate_ids(tmp_path):
    p = lines(tmp_path, {**GOOD, "id": "x"}, {**GOOD, "id": "y"}, {**GOOD, "id": "x"})
    with pytest.raises(DataError) as e:
        io.validate(p)
    assert (e.value.line, e.value.field) == (3, "id") and "first at" in e.value.message
    assert "line 1" in e.value.message
