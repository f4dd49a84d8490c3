"""Models: the world tokenizer and tiny presets, load/save of HF causal LMs, LoRA, logprobs.

Submodules are imported directly (`from coachlm.models.load import load_model`), so that importing
the package does not load transformers.
"""
