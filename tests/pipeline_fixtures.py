"""Tiny settings for the quickstart pipeline, so that a whole run takes seconds."""

TINY = ["world.sft_demos=64", "world.train_prompts=16", "world.heldout_per_family=2",
        "world.corpus_chars=60000", "pretrain.preset=world-tiny", "pretrain.seq_len=64",
        "pretrain.vocab_size=512", "pretrain.train.max_steps=4", "pretrain.train.batch_size=4",
        "sft.train.max_steps=4", "sft.train.batch_size=4", "sft.max_length=96", "sample.n=3",
        "sample.max_new_tokens=12", "rm.train.batch_size=4", "ppo.ppo.steps=2",
        "ppo.ppo.rollout_batch_size=4", "ppo.ppo.samples_per_prompt=1",
        "ppo.ppo.mini_batch_size=4", "ppo.ppo.micro_batch_size=4", "ppo.ppo.max_new_tokens=12",
        "eval.max_new_tokens=16", "eval.kl_samples=4", "eval.bootstrap=50"]
