"""Trainers: one module per method, each supplying the one engine (`coachlm.engine.loop`) a batch
source and a loss function: pretrain, sft, reward, dpo, ppo.

Import the method modules directly (`from coachlm.trainers.sft import SFTConfig, run_sft`);
this package imports nothing heavy by itself.
"""
