"""Trainers: one shared loop (`loop.train`) and one module per method, each supplying a batch
source and a loss function: pretrain, sft, reward, dpo, ppo.

Import the method modules directly (`from coachlm.trainers.sft import SFTConfig, run_sft`);
this package imports nothing heavy by itself.
"""
