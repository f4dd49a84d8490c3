"""The constitution format: the default loads, and every malformed file fails with one clear line."""

import os
import subprocess
import sys

import pytest
import yaml

from coachlm.constitution import (ConstitutionError, default_constitution, load_constitution,
                                  parse_constitution)

GOOD = {"principles": [{"id": "harmless", "critique_request": "Point out harm.",
                        "revision_request": "Remove the harm.",
                        "comparison_question": "Which response is less harmful?"},
                       {"id": "concise", "critique_request": "Point out filler.",
                        "revision_request": "Cut the filler.",
                        "comparison_question": "Which response is shorter?"}]}


def _with(**changes):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    for path, value in changes.items():
        node, *keys = path.split("__")
        target = data
        for k in [node, *keys][:-1]:
            target = target[int(k)] if isinstance(target, list) else target[k]
        last = [node, *keys][-1]
        if value is None:
            del target[int(last) if isinstance(target, list) else last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return data


def test_default_constitution_has_sixteen_distinct_principles():
    c = default_constitution()
    assert len(c.principles) == 16 and len(set(c.ids)) == 16
    for key in ("harmless", "honest", "helpful", "format", "concise", "no_lecturing"):
        p = c.principle(key)
        assert p.critique_request and p.revision_request and p.comparison_question.endswith("?")
    assert c.critique_examples and c.comparison_examples
    assert {e.answer for e in c.comparison_examples} <= {"A", "B"}


def test_select_keeps_named_principles_and_their_examples():
    c = default_constitution().select(["privacy", "harmless"])
    assert c.ids == ("privacy", "harmless")
    assert [e.principle for e in c.critique_examples] == ["privacy"]
    with pytest.raises(ConstitutionError, match="unknown principle 'nope'"):
        default_constitution().select(["nope"])


@pytest.mark.parametrize("data, message", [
    (_with(principles__0__comparison_question=None), "principles[0] ('harmless'): missing field 'comparison_question'"),
    (_with(principles__1__critique_request="   "), "principles[1] ('concise'): critique_request is empty"),
    (_with(principles__1__id="harmless"), "duplicate principle id 'harmless'"),
    (_with(principles__0__id="no spaces"), "id may hold only letters"),
    (_with(principles__0__comparison_questoin="x"), "unknown field 'comparison_questoin'"),
    (_with(principles=[]), "'principles' must be a non-empty list"),
    (_with(principles=None), "missing field 'principles'"),
    ({**GOOD, "examples": {"comparison": [{"principle": "kind", "prompt": "p", "a": "x", "b": "y",
                                           "answer": "A"}]}},
     "examples.comparison[0]: unknown principle 'kind'"),
    ({**GOOD, "examples": {"comparison": [{"principle": "harmless", "prompt": "p", "a": "x",
                                           "b": "y", "answer": "C"}]}}, "answer must be A or B"),
    ({**GOOD, "examples": {"critique": [{"principle": "harmless", "prompt": "p"}]}},
     "examples.critique[0]: missing field 'response'"),
    ([1, 2], "the top level must be a mapping"),
])
def test_malformed_constitution_names_the_field(data, message):
    with pytest.raises(ConstitutionError) as e:
        parse_constitution(data, "c.yaml")
    assert message in str(e.value) and str(e.value).startswith("c.yaml")
    assert "\n" not in str(e.value)


def test_load_constitution_file_roundtrip_and_bad_yaml(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    c = load_constitution(path)
    assert c.name == "mine" and c.ids == ("harmless", "concise")
    path.write_text("principles: [unclosed")
    with pytest.raises(ConstitutionError, match="not valid YAML"):
        load_constitution(path)
    with pytest.raises(ConstitutionError, match="does not exist"):
        load_constitution(tmp_path / "missing.yaml")


def test_cli_reports_a_bad_constitution_in_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with(principles__1__comparison_question="")))
    env = {**os.environ, "COACHLM_NO_PROGRESS": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "coachlm.cli", "cai", "constitution", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "comparison_question is empty" in proc.stderr
    ok = subprocess.run([sys.executable, "-m", "coachlm.cli", "cai", "constitution"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and "no_lecturing" in ok.stderr
