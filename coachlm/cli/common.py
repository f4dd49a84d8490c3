"""What every command shares: the stderr console, `--config` and dotted overrides, the loader."""

from __future__ import annotations

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from coachlm import config as cfglib

console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file.", exists=False)
OverridesArg = typer.Argument(None, help="Dotted overrides, e.g. train.max_steps=100 train.lr=3e-4.")
SkipInvalidOpt = typer.Option(False, "--skip-invalid",
                              help="Skip malformed records with a warning (count and first few "
                                   "file:line) instead of stopping at the first.")
DeviceOpt = typer.Option(None, "--device", help="auto (CUDA when visible), cpu or cuda.")
load = cfglib.load_options  # defaults < --config YAML < named options < dotted overrides


def flag(value: bool) -> bool | None:
    """A flag given on the command line (True), else None: the config file or default decides."""
    return True if value else None


class TrainByDefault(TyperGroup):
    """A command group whose first command (`train`) runs when no command name is given."""

    default = "train"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)
