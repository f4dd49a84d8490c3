"""Our DPO loss and gradients equal TRL's DPOTrainer on the same tiny model and batch.

TRL (a test-only dependency) is the independent oracle: its `compute_loss` runs on a copy of
the same policy, with a copy of the same reference model, on the same token ids (collated by
its own DataCollatorForPreference); ours runs through `pair_loss` in each of our layouts with
the reference logps precomputed, as `coachlm dpo` does.
"""

from __future__ import annotations

import copy

import pytest
import torch

from coachlm.data.pairs import Pair, collate, with_reference
from coachlm.trainers.dpo import DPOConfig, pair_loss
from coachlm.trainers.dpo_logps import sequence_logps
from trainers_fixtures import tiny_model, tiny_tokenizer

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    reference = tiny_model(tok, seed=0)
    policy = copy.deepcopy(reference)  # a policy that has moved away from its reference
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    g = torch.Generator().manual_seed(2)

    def ids(n: int) -> list[int]:
        return torch.randint(7, 290, (n,), generator=g).tolist()

    examples = [dict(prompt_ids=ids(p), chosen_ids=ids(c), rejected_ids=ids(r))
                for p, c, r in [(5, 3, 7), (9, 4, 2), (2, 6, 6), (12, 1, 3), (3, 2, 2), (4, 8, 1)]]
    return tok, reference, policy, examples


def trl_loss_and_grads(tok, reference, policy, examples, loss_type, beta, tmp_path):
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    args = TRLConfig(output_dir=str(tmp_path), beta=beta, loss_type=[loss_type], use_cpu=True,
                     report_to="none", gradient_checkpointing=False, max_length=None, bf16=False,
                     disable_tqdm=True, precompute_ref_log_probs=False)
    # The dataset only satisfies the constructor; the batch below is what both are scored on.
    data = datasets.Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]})
    model = copy.deepcopy(policy)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(reference), args=args,
                         train_dataset=data, processing_class=tok)
    batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(examples)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_loss_and_gradients_equal_trl(setup, loss_type, tmp_path):
    tok, reference, policy, examples = setup
    beta = 0.1
    want_loss, want_grads = trl_loss_and_grads(tok, reference, policy, examples, loss_type, beta, tmp_path)
    pairs = [Pair(tuple(e["prompt_ids"]), tuple(e["chosen_ids"]), tuple(e["rejected_ids"])) for e in examples]
    cfg = DPOConfig(model="m", data=("d",), out="o", beta=beta, loss=loss_type)
    for layout in ("pad", "pack", "share"):
        batch = collate(pairs, layout, tok.pad_token_id)
        with torch.no_grad():
            ref = sequence_logps(reference, batch)  # (2B,), precomputed as `coachlm dpo` does
        batch = with_reference(batch, torch.stack([ref[:len(pairs)], ref[len(pairs):]], dim=1))
        model = copy.deepcopy(policy)
        out = pair_loss(model, batch, cfg)
        loss = out.loss_sum / out.count  # the loop's reduction: a mean over pairs, as TRL's
        loss.backward()
        assert float(loss.detach()) == pytest.approx(want_loss, abs=1e-5), layout
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, want_grads[name], atol=1e-5, rtol=1e-4,
                                       msg=lambda m: f"{layout} {name}: {m}")
    assert want_loss != pytest.approx(0.6931, abs=1e-3)  # the policy really differs from the reference
