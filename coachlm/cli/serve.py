"""`coachlm serve MODEL`: an OpenAI-compatible server over a local model (`serving.server`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from coachlm.cli.common import console


def serve(model: Path = typer.Argument(..., help="A Hugging Face causal LM directory (e.g. a policy's final/)."),
          host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
          port: int = typer.Option(8000, help="Port."),
          name: Optional[str] = typer.Option(None, help="Model name served (default: the directory's name)."),
          dtype: str = typer.Option("fp32", help="fp32 or bf16."),
          threads: int = typer.Option(1, help="torch CPU threads.")) -> None:
    """Serve MODEL with /v1/models, /v1/completions (logprobs, echo) and /v1/chat/completions."""
    import torch
    import uvicorn

    from coachlm.errors import CoachError
    from coachlm.serving.lm import LocalLM
    from coachlm.serving.server import create_app

    if dtype not in ("fp32", "bf16"):
        raise CoachError(f"dtype must be fp32 or bf16, got {dtype!r}")
    torch.set_num_threads(threads)
    lm = LocalLM.load(model, name, dtype)
    console.print(f"serving {lm.name} on http://{host}:{port}/v1")
    uvicorn.run(create_app(lm), host=host, port=port, log_level="warning")
