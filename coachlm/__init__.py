"""coachlm: teach language models human preferences (RLHF and RLAIF)."""

__version__ = "0.1.0"  # keep equal to pyproject.toml; part of every pipeline cache key
