"""Rollouts: batched KV-cache sampling (`sampling`) and N responses per prompt as Sample records (`samples`)."""
