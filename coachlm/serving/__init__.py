"""A local causal LM for scoring and generation (`lm.LocalLM`), and `coachlm serve`, an
OpenAI-compatible server over it (`server.create_app`). The AI labeler's in-process backend and
the server share `LocalLM`, so a feedback model gives the same numbers either way."""
