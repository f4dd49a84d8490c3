"""The RL-CAI AI labeler: soft labels in both orders, in process and through `coachlm serve` on
127.0.0.1 (same probabilities to 1e-4), chain of thought, resumable `coachlm cai label`, and one
clear line for a bad endpoint (down, no logprobs, garbage, timeout)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import torch

from coachlm.data.chat import render_prompt
from coachlm.data.io import read_records, write_records
from coachlm.data.schema import Comparison, Response, Sample, as_prompt
from coachlm.errors import CoachError
from coachlm.labelers import group_samples
from coachlm.constitution import ComparisonExample, Principle, load_constitution
from coachlm.labelers.ai import (ANSWER, AIConfig, AILabeler, AIJudge, few_shot, normalize,
                                 position_bias, question)
from coachlm.labelers.backends import EndpointConfig, FeedbackModelError, LocalModel, OpenAIModel
from coachlm.serving.lm import LocalLM
from feedback_support import free_port
from models_fixtures import REPO, model, tokenizer

PRINCIPLES = [Principle("harmless", "Critique.", "Revise.", "Which response is less harmful?"),
              Principle("concise", "Critique.", "Revise.", "Which response is more concise?")]


def _samples() -> list[Sample]:
    rows = [("What is 2 plus 2?", ["2 plus 2 is 4.", "the cat sat on a mat.", "4"]),
            ("Write a short email to Ann.", ["Dear Ann, I hope you are well.", "no"])]
    return [Sample(prompt=as_prompt(p), response=Response(t, model="sft", model_version=f"v{i}"))
            for p, texts in rows for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    return LocalLM(model(seed=3), tokenizer(), "tiny")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from coachlm.models.load import save_pretrained

    out = tmp_path_factory.mktemp("feedback_model") / "tiny"
    save_pretrained(model(seed=3), tokenizer(), out)
    return out


class Biased:
    """A scripted feedback model: logit(A) - logit(B) = true preference of the first-shown
    response + a bias toward position A (tests the order-swapping arithmetic only)."""

    name = "biased"

    def __init__(self, bias: float):
        self.bias = bias

    def option_logprobs(self, contexts, options):
        out = []
        for c in contexts:
            first = c.rsplit("Options:\n(A) ", 1)[1].split("\n")[0]  # the last question's
            d = (1.0 if first.startswith("2 plus 2 is 4") else -1.0) + self.bias
            out.append([d / 2, -d / 2])
        return out

    def generate(self, contexts, max_tokens):
        return [" reasoning"] * len(contexts)


def test_soft_label_cancels_position_bias():
    group = group_samples(_samples()[:2])
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    both = AILabeler(Biased(bias=0.8), PRINCIPLES).label(group)[0]
    assert both.meta["p_ab"] == pytest.approx(sigmoid(1.8))
    assert both.meta["p_ba"] == pytest.approx(1 - sigmoid(-1 + 0.8))
    assert both.meta["probability"] == pytest.approx((sigmoid(1.8) + sigmoid(1.0 - 0.8)) / 2)
    assert both.choice == "a" and both.source == "ai" and both.shown_order is None
    one = AILabeler(Biased(bias=0.8), PRINCIPLES, AIConfig(both_orders=False, seed=1)).label(group)[0]
    assert one.shown_order in ("ab", "ba") and one.meta[f"p_{one.shown_order}"] is not None
    assert position_bias([both]) == {"records": 1, "first_rate": 0.5, "flip_rate": 0.0}
    strong = AILabeler(Biased(bias=3.0), PRINCIPLES).label(group)
    assert position_bias(strong) == {"records": 1, "first_rate": 1.0, "flip_rate": 1.0}
    cot = AILabeler(Biased(bias=0.8), PRINCIPLES, AIConfig(chain_of_thought=True)).label(group)[0]
    assert cot.meta["p_ab"] == 0.6 and cot.meta["p_ba"] == pytest.approx(sigmoid(0.2))
    assert normalize([math.log(0.2), math.log(0.6)]) == pytest.approx([0.25, 0.75])
    with pytest.raises(CoachError, match="unusable"):
        normalize([float("nan"), 0.0])


def test_in_process_labels_are_the_models_option_probabilities(lm):
    samples = _samples()
    groups = group_samples(samples, min_size=2)
    records = AILabeler(LocalModel(lm=lm), PRINCIPLES, AIConfig(seed=5)).label(groups)
    assert len(records) == 3 + 1 and all(isinstance(r, Comparison) for r in records)
    r = records[0]
    principle = next(p for p in PRINCIPLES if p.id == r.meta["principle"])
    ctx = question(r.prompt, r.a.text, r.b.text, principle) + ANSWER
    la, lb = (lm.score([ctx + o])[0][-1].logprob for o in "AB")  # "A" is one token here
    assert r.meta["p_ab"] == pytest.approx(math.exp(la) / (math.exp(la) + math.exp(lb)), abs=1e-6)
    assert r.meta["probability"] == pytest.approx((r.meta["p_ab"] + r.meta["p_ba"]) / 2)
    assert r.labeler == "ai:tiny" and r.meta["feedback_model"] == "tiny"
    assert r.a.model_version == "v0" and r.meta["sample_ids"] == [s.id for s in samples[:2]]
    assert {x.meta["principle"] for x in records} <= {"harmless", "concise"}
    again = AILabeler(LocalModel(lm=lm), PRINCIPLES, AIConfig(seed=5)).label(groups)
    assert [x.meta["principle"] for x in again] == [x.meta["principle"] for x in records]
    judge = AIJudge(AILabeler(LocalModel(lm=lm), PRINCIPLES, AIConfig(seed=5)))
    assert judge.prefer(r.prompt, r.a.text, r.b.text) == pytest.approx(r.meta["probability"])


def test_chain_of_thought_generates_then_reads_clamped_options(lm):
    cfg = AIConfig(chain_of_thought=True, cot_max_tokens=4)
    r = AILabeler(LocalModel(lm=lm), PRINCIPLES, cfg).label(group_samples(_samples()[:2]))[0]
    assert 0.4 <= r.meta["p_ab"] <= 0.6 and 0.4 <= r.meta["probability"] <= 0.6
    assert r.meta["chain_of_thought"] is True


# -------------------------------------------------------------------- coachlm serve on loopback


def _wait(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def served(model_dir):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "coachlm.cli", "serve", str(model_dir),
                             "--port", str(port), "--name", "tiny"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait(f"http://127.0.0.1:{port}/v1/models", proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(30)


def test_served_labels_equal_in_process(served, lm):
    groups = group_samples(_samples(), min_size=2)
    local = AILabeler(LocalModel(lm=lm), PRINCIPLES).label(groups)
    remote_model = OpenAIModel(EndpointConfig(base_url=served, concurrency=2))
    assert remote_model.name == "tiny"  # the first model the server lists
    remote = AILabeler(remote_model, PRINCIPLES).label(groups)
    for x, y in zip(local, remote):
        assert y.meta["p_ab"] == pytest.approx(x.meta["p_ab"], abs=1e-4)
        assert y.meta["p_ba"] == pytest.approx(x.meta["p_ba"], abs=1e-4)
        assert y.meta["principle"] == x.meta["principle"] and y.choice == x.choice
    assert remote_model.tokens_used > 0


def test_served_chat_mode_and_generation(served, lm):
    chat = OpenAIModel(EndpointConfig(base_url=served, model="tiny", mode="chat",
                                      top_logprobs=len(tokenizer())))
    ctx = "Which is better? (A) or (B)."
    rendered = render_prompt(lm.tokenizer, as_prompt(ctx))
    [expected] = lm.option_logprobs([rendered], ["A", "B"])
    [got] = chat.option_logprobs([ctx], ["A", "B"])
    assert got == pytest.approx(expected, abs=1e-4)
    text = OpenAIModel(EndpointConfig(base_url=served, model="tiny")).generate(["the cat"], 5)[0]
    assert text == lm.complete(["the cat"], 5)[0].text
    assert chat.generate([ctx], 3)[0] == lm.complete([rendered], 3)[0].text


def test_server_rejects_bad_requests(served):
    req = urllib.request.Request(f"{served}/completions", data=json.dumps(
        {"prompt": "x", "max_tokens": -1}).encode(), headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400 and "max_tokens" in json.loads(e.value.read())["error"]["message"]


# ------------------------------------------------------------------------------- bad endpoints


@pytest.fixture(scope="module")
def bad_server():
    """An endpoint answering wrongly on purpose: no logprobs, not JSON, or too slowly."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.post("/nologprobs/v1/completions")
    def nologprobs():
        return {"id": "x", "object": "text_completion", "created": 0, "model": "m",
                "choices": [{"index": i, "text": "hi", "finish_reason": "length",
                             "logprobs": None} for i in range(2)]}

    @app.post("/garbage/v1/completions")
    def garbage():
        return PlainTextResponse("<html>oops</html>")

    calls = {"flaky": 0}

    @app.post("/flaky/v1/completions")
    def flaky():
        """503 on the first call (a transient error), then a scored echo of "ctx" + option."""
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            return PlainTextResponse("busy", status_code=503)
        return {"id": "x", "object": "text_completion", "created": 0, "model": "m", "choices": [
            {"index": i, "text": "ctx" + o, "finish_reason": "length",
             "logprobs": {"tokens": ["ctx", o], "token_logprobs": [None, lp],
                          "text_offset": [0, 3], "top_logprobs": None}}
            for i, (o, lp) in enumerate((("A", -1.0), ("B", -2.0)))]}

    @app.post("/slow/v1/completions")
    def slow():
        time.sleep(3)
        return {}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", calls
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("path,message", [("nologprobs", "returned no logprobs"),
                                          ("garbage", "unusable answer"),
                                          ("slow", "timed out after 0.5 s")])
def test_bad_endpoint_is_one_clear_error(bad_server, path, message):
    m = OpenAIModel(EndpointConfig(base_url=f"{bad_server[0]}/{path}/v1", model="m", timeout_s=0.5,
                                   max_retries=0))
    with pytest.raises(FeedbackModelError, match=message) as e:
        m.option_logprobs(["ctx"], ["A", "B"])
    assert "\n" not in str(e.value)


def test_transient_errors_are_retried(bad_server):
    url, calls = bad_server
    m = OpenAIModel(EndpointConfig(base_url=f"{url}/flaky/v1", model="m", max_retries=2))
    assert m.option_logprobs(["ctx"], ["A", "B"]) == [[-1.0, -2.0]]
    assert calls["flaky"] == 2  # one 503, retried after a backoff, then the answer


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COACHLM_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "coachlm.cli", "cai", "label", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_endpoint_down_exits_2_with_one_line(tmp_path):
    write_records(tmp_path / "s.jsonl", _samples())
    res = _cli("--samples", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "o.jsonl"),
               "--endpoint", f"http://127.0.0.1:{free_port()}/v1", "--endpoint-model", "m",
               "max_retries=0", "timeout_s=5")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "unreachable" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_resumes_without_duplicates(tmp_path, model_dir):
    write_records(tmp_path / "s.jsonl", _samples())
    base = ["--samples", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "o.jsonl"),
            "--model", str(model_dir)]  # the default constitution
    first = _cli(*base, "limit=2", "chunk=1")
    assert first.returncode == 0, first.stderr
    kept = [r.id for r in read_records(tmp_path / "o.jsonl")]
    assert len(kept) == 2
    second = _cli(*base)
    assert second.returncode == 0, second.stderr
    records = list(read_records(tmp_path / "o.jsonl"))
    assert [r.id for r in records[:2]] == kept and len(records) == 4
    assert len({r.meta["pair_key"] for r in records}) == 4
    assert '"labeled": 2' in second.stderr  # the summary (on stderr, like every command)


def test_few_shot_examples_and_the_default_constitution():
    ex = ComparisonExample("harmless", "Hurt him?", "Sure.", "No; talk to him.", "B",
                           reasoning="(A) helps harm.")
    other = ComparisonExample("unused", "x", "y", "z", "A")
    text = few_shot([ex, other], PRINCIPLES, cot=False)
    assert text == (question(as_prompt("Hurt him?"), "Sure.", "No; talk to him.", PRINCIPLES[0])
                    + ANSWER + "B)\n\n")
    assert "Let's think step by step: (A) helps harm.\n" in few_shot([ex], PRINCIPLES, cot=True)
    c = load_constitution()
    lab = AILabeler(Biased(0.0), c.principles, AIConfig(few_shot=True), c.comparison_examples)
    assert lab.prefix.count(ANSWER) == len(c.comparison_examples) > 0
    r = lab.label(group_samples(_samples()[:2]))[0]
    assert r.meta["principle"] in c.ids


def test_unknown_principle_and_too_long_context_are_clear_errors(tmp_path, lm):
    from coachlm.labelers.ai_run import AILabelConfig, run_ai_label

    write_records(tmp_path / "s.jsonl", _samples())
    cfg = AILabelConfig(samples=tmp_path / "s.jsonl", out=tmp_path / "o.jsonl", model=tmp_path,
                        principles=("nope",))
    with pytest.raises(CoachError, match="unknown principle 'nope'"):
        run_ai_label(cfg)
    with pytest.raises(CoachError, match="exceeds the model's context of 256 tokens"):
        lm.score(["the cat sat. " * 200])


def test_pair_longer_than_the_context_is_skipped_and_counted(tmp_path, model_dir):
    """A pair whose question exceeds the feedback model's context is left out and counted in
    the run summary, not a run error; the other pairs are labelled as usual."""
    from coachlm.labelers.ai_run import AILabelConfig, run_ai_label

    long = Sample(prompt=as_prompt("Write a short email to Ann."),
                  response=Response("the cat sat. " * 120, model="sft", model_version="long"))
    write_records(tmp_path / "s.jsonl", [*_samples(), long])
    cfg = AILabelConfig(samples=tmp_path / "s.jsonl", out=tmp_path / "o.jsonl", model=model_dir)
    summary = run_ai_label(cfg)
    # 3 pairs of the first prompt fit; of the email prompt's 3 pairs, the 2 with `long` do not
    assert summary["skipped_too_long"] == 2 and summary["labeled"] == 4
    records = list(read_records(tmp_path / "o.jsonl"))
    assert len(records) == 4 and all("the cat sat. the cat" not in r.a.text + r.b.text
                                     for r in records)
