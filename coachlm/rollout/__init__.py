"""Rollouts: batched KV-cache sampling (`sampling`) and `coachlm sample` (`sample_cmd`)."""
