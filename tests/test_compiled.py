"""Regional torch.compile (`coachlm.models.compiled`): one graph shared by every decoder layer,
no-grad calls eager, the on-disk cache's place, and `compile: auto`."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from coachlm import config
from coachlm.config import ConfigError
from coachlm.errors import CoachError
from coachlm.models import compiled
from coachlm.models.compiled import cache_dir, compile_layers, mark_compiled, resolve_compile
from coachlm.trainers.configs import SFTConfig
from trainers_fixtures import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COACHLM_COMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # compiling sets it: undone after
    return tmp_path / "cache"


def _loss(model, ids):
    return model(input_ids=ids, use_cache=False).logits.float().pow(2).mean()


def test_layers_share_one_graph_and_no_grad_calls_stay_eager(tok, cache):
    torch._dynamo.reset()
    eager, model = tiny_model(tok), tiny_model(tok)
    counter = CompileCounter()
    layers = compile_layers(model, backend=counter)
    assert len(layers) == 2 and all(l._compiled_call_impl is not None for l in layers)
    ids = torch.randint(0, len(tok), (2, 9), generator=torch.Generator().manual_seed(0))
    loss, expect = _loss(model, ids), _loss(eager, ids)
    loss.backward()
    expect.backward()
    assert counter.frame_count == 1  # the second layer reused the first one's graph
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)
    grads = dict(eager.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-5, atol=1e-7)
    ids2 = torch.randint(0, len(tok), (3, 13), generator=torch.Generator().manual_seed(1))
    _loss(model, ids2).backward()  # another batch shape: the same shape-generic graph
    assert counter.frame_count == 1
    with torch.no_grad():
        model(input_ids=ids2, use_cache=False)
    assert counter.frame_count == 1  # no-grad forwards run eager: nothing more compiled
    assert list(model.state_dict()) == list(eager.state_dict())  # no `_orig_mod.` prefixes


def test_compile_needs_decoder_layers_and_a_compiler(tok, monkeypatch):
    with pytest.raises(CoachError, match="no list of decoder layers"):
        compile_layers(torch.nn.Linear(2, 2))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(CoachError, match="needs a C\\+\\+ compiler"):
        compile_layers(tiny_model(tok))
    assert resolve_compile("auto", tiny_model(tok), 10**9, 8, False) is False


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv("COACHLM_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "coachlm" / "inductor"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "coachlm" / "inductor"
    monkeypatch.setenv("COACHLM_COMPILE_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_use_cache_dir_points_inductor_there_unless_the_user_chose(monkeypatch, tmp_path):
    monkeypatch.setenv("COACHLM_COMPILE_CACHE", str(tmp_path / "a"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert compiled.use_cache_dir() == tmp_path / "a"
    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_dir
    assert inductor_dir() == str(tmp_path / "a")
    monkeypatch.setenv("COACHLM_COMPILE_CACHE", str(tmp_path / "b"))  # ours moves with it
    assert compiled.use_cache_dir() == tmp_path / "b" and inductor_dir() == str(tmp_path / "b")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "user"))  # the user's stays
    assert compiled.use_cache_dir() == tmp_path / "user"


def test_auto_compiles_only_past_the_break_even(tok, cache):
    model = tiny_model(tok)  # world-tiny: 2 layers of 10,304 parameters
    assert resolve_compile(True, model, 1, 8, False) is True
    assert resolve_compile(False, model, 10**9, 8, False) is False
    # world-25m's break-even (500 steps cold, 150 warm at batch 8) scaled by its 25,171,968
    # layer parameters over these 20,608 and by 8 over the batch: ceil(500 * 1221.47 * 8 / 16)
    assert compiled.break_even_steps(model, 16, warm=False) == 305_367
    assert resolve_compile("auto", model, 305_366, 16, False) is False
    assert resolve_compile("auto", model, 305_367, 16, False) is True
    assert resolve_compile("auto", model, 305_367, 16, False, device="cuda") is False
    assert resolve_compile("auto", model, 2, 8, False) is False  # a test-sized run: eager
    mark_compiled(model, bf16=False)  # its code is now cached: the warm figure applies
    assert compiled.break_even_steps(model, 16, warm=True) == 91_610  # ceil(150 * 1221.47 / 2)
    assert resolve_compile("auto", model, 91_610, 16, False) is True
    assert resolve_compile("auto", model, 91_609, 16, False) is False
    assert resolve_compile("auto", model, 91_610, 16, True) is False  # bf16: another graph, cold


def test_compile_setting_is_auto_true_or_false(tmp_path):
    base = {"model": str(tmp_path), "data": [str(tmp_path / "d.jsonl")], "out": str(tmp_path)}
    assert config.from_dict(SFTConfig, base).compile == "auto"
    for value in ("auto", True, False):
        assert config.from_dict(SFTConfig, {**base, "compile": value}).compile == value
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="compile"):
            config.from_dict(SFTConfig, {**base, "compile": bad})
    with pytest.raises(ValueError, match="compile must be auto, true or false"):
        SFTConfig(model=tmp_path, data=(tmp_path,), out=tmp_path, compile="on")


def test_a_deep_copy_runs_its_own_weights(tok, cache):
    import copy

    model, expect = tiny_model(tok), tiny_model(tok)
    compile_layers(model, backend="eager")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in (*twin.parameters(), *expect.parameters()):
            p.mul_(0.5)
    ids = torch.randint(0, len(tok), (2, 9), generator=torch.Generator().manual_seed(0))
    assert _loss(twin, ids).item() == pytest.approx(_loss(expect, ids).item(), rel=1e-6)
