"""Tiny tokenizer, model and data for the trainer tests (built at test time, nothing downloaded)."""

from __future__ import annotations

import random

from coachlm.data.schema import Demonstration, Message, Response
from coachlm.models.presets import build_model
from coachlm.models.tokenizer import train_tokenizer

WORDS = "the cat dog sat ran on a mat hat big small red blue and then it was happy sad".split()


def tiny_texts(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + "." for _ in range(n)]


def tiny_demos(n: int = 64, seed: int = 0) -> list[Demonstration]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        out.append(Demonstration(prompt=(Message("user", f"What is {a} plus {b}?"),),
                                 response=Response(f"{a} plus {b} is {a + b}.")))
    return out


def tiny_tokenizer(vocab_size: int = 300):
    texts = tiny_texts() + [f"What is {i} plus {i}? {i} plus {i} is {2 * i}." for i in range(20)]
    return train_tokenizer(texts, vocab_size=vocab_size)


def tiny_model(tokenizer, seed: int = 0):
    return build_model("world-tiny", tokenizer, seed=seed)


class ListSource:
    """A batch source cycling through fixed batches (for exact comparisons)."""

    def __init__(self, batches):
        self.batches, self.position = list(batches), 0

    def next_batch(self):
        batch = self.batches[self.position % len(self.batches)]
        self.position += 1
        return batch

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def resume_run(out_dir, kill_at: int | None = None, resume: bool = False, lora: bool = False,
               crash_at: int | None = None):
    """Train the tiny model 8 steps with checkpoints every 3; return its final trainable weights.

    `kill_at` SIGKILLs this process after that step (the kill-and-resume test runs this in a
    subprocess); `crash_at` raises instead (an in-process interruption).
    """
    import os
    import signal

    from coachlm.data.chat import encode_example
    from coachlm.data.collate import ExampleBatches
    from coachlm.engine.checkpoint import trainable_state
    from coachlm.engine.config import TrainConfig
    from coachlm.engine.loop import train
    from coachlm.trainers.lm_loss import causal_lm_loss

    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=0)
    if lora:
        import torch

        from coachlm.models.lora import LoRAConfig, apply_lora

        torch.manual_seed(0)  # LoRA's A is drawn at random: every run must start from the same one
        model = apply_lora(model, LoRAConfig(r=4))
    examples = [encode_example(tok, d.prompt, d.response.text) for d in tiny_demos(40)]
    batches = ExampleBatches(examples, 4, tok.pad_token_id, seed=1, bucket_batches=2)
    cfg = TrainConfig(lr=3e-3, warmup_steps=2, max_steps=8, batch_size=4, grad_accum=2,
                      checkpoint_every=3, keep_checkpoints=2, log_every=1, bf16=False, threads=1)

    def on_step(step, metrics):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == crash_at:
            raise KeyboardInterrupt

    train(model, batches, causal_lm_loss, cfg, out_dir, resume=resume, on_step=on_step)
    return {k: v.clone() for k, v in trainable_state(model).items()}
