"""The checkpoint files themselves (one process): what is stored, and the one-line errors when a
checkpoint does not fit the run resuming from it. Resuming whole runs is tested in
test_loop_resume (exact, killed mid-run) and test_engine_fsdp (across process counts)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint import FileSystemReader

from coachlm.engine.checkpoint import load_checkpoint, save_checkpoint
from coachlm.errors import CoachError


def _model(frozen_first: bool = True) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(not frozen_first)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    return model, optimizer


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.ones(2, 3)).square().sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_trainable_weights_and_optimizer_round_trip(tmp_path):
    model, optimizer = _model()
    _step(model, optimizer)
    ckpt = save_checkpoint(tmp_path, 1, model, optimizer, {"data": {"position": 3}}, keep=2)
    stored = FileSystemReader(ckpt / "weights").read_metadata().state_dict_metadata
    assert sorted(k for k in stored if k.startswith("model.")) == ["model.1.bias", "model.1.weight"]

    fresh, fresh_opt = _model()
    state = load_checkpoint(ckpt, fresh, fresh_opt)
    assert state["data"] == {"position": 3} and state["step"] == 1
    assert torch.equal(fresh[1].weight, model[1].weight)
    _step(model, optimizer)
    _step(fresh, fresh_opt)  # same moments: the same next step
    assert torch.equal(fresh[1].weight, model[1].weight)


def test_checkpoint_of_other_trainable_parameters_is_one_line_error(tmp_path):
    model, optimizer = _model(frozen_first=False)
    ckpt = save_checkpoint(tmp_path, 1, model, optimizer, {}, keep=2)
    other, other_opt = _model(frozen_first=True)
    with pytest.raises(CoachError, match="does not match the model's trainable parameters"):
        load_checkpoint(ckpt, other, other_opt)


def test_checkpoint_without_weights_is_one_line_error(tmp_path):
    model, optimizer = _model()
    (tmp_path / "step-000001").mkdir()
    torch.save({}, tmp_path / "step-000001" / "model.pt")  # the layout before sharded checkpoints
    with pytest.raises(CoachError, match="has no weights/"):
        load_checkpoint(tmp_path / "step-000001", model, optimizer)
