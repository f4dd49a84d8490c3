"""Evaluation decoding sharded over processes (`engine.shard`): two processes under
`accelerate launch` decode the prompts in two contiguous shares and gather them, and the
report and samples equal one process's exactly (sampled responses too: each row draws from
the stream numbered by its place in the whole list)."""

from __future__ import annotations

import json

from coachlm.data.io import write_records
from coachlm.data.schema import Message, PromptRecord
from coachlm.engine.shard import share, shard_map
from test_engine_multiprocess import files, launch, run_cli  # noqa: F401


def test_shares_are_contiguous_cover_everything_once():
    for n in range(0, 12):
        for processes in (1, 2, 3, 5):
            parts = [share(n, r, processes) for r in range(processes)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_shard_map_without_a_launcher_is_a_call():
    assert shard_map(lambda xs, start: [(start, x * 2) for x in xs], [1, 2, 3]) == \
        [(0, 2), (0, 4), (0, 6)]


def test_eval_two_processes_equal_one(files, tmp_path):  # noqa: F811
    prompts = tmp_path / "prompts.jsonl"  # 7: the shares are 4 and 3
    write_records(prompts, [PromptRecord(prompt=(Message("user", f"What is {i} plus {i}?"),))
                            for i in range(7)])

    def args(out):
        return ["eval", "--model", str(files / "base"), "--prompts", str(prompts), "--out",
                str(out), "greedy=false", "max_new_tokens=8", "batch_size=3", "seed=3"]
    launch(args(tmp_path / "two"))
    run_cli(args(tmp_path / "one"))
    one, two = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("one", "two"))
    assert two == one
    responses = [[json.loads(line)["response"]["text"] for line in
                  (tmp_path / d / "samples_base.jsonl").read_text().splitlines()]
                 for d in ("one", "two")]
    assert len(responses[0]) == 7 and responses[1] == responses[0]
    assert len(set(responses[0])) > 1  # sampled, not one response repeated
