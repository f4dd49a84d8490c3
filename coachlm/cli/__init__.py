"""The `coachlm` command line, every command in this package.

Each command parses its options, builds a typed config and makes one library call; nothing in
the rest of the package imports `cli`. Modules: `app` (the root app: world, pretrain, sft, sample,
eval, dpo, ppo, and `main`), `pipeline` (run, demo, report, loop), `data`, `rm`, `label`,
`cai`, `serve`, `common` (shared options and loader).
"""

from coachlm.cli.app import main

__all__ = ["main"]
