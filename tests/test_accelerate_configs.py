"""The accelerate configs in examples/accelerate/ go through accelerate's own launcher code:
the file parser (unknown top-level keys are errors), `accelerate launch`'s validation, the
environment the launcher hands the processes, and the FSDP / DeepSpeed plugin built from that
environment as `Accelerator` builds it (which checks the values: wrap policy, sharding strategy,
ZeRO stage, offload devices). A key inside `fsdp_config` / `deepspeed_config` that no launcher
option reads would be silently ignored by accelerate, so it is an error here."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
CONFIGS = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


def test_every_config_is_checked():
    assert {"cpu2.yaml", "ddp.yaml", "fsdp.yaml", "fsdp_cpu2.yaml", "zero2.yaml",
            "zero3.yaml"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_accelerates_parser_and_plugins(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = str(EXAMPLES / name)
    cfg = load_config_from_file(path)
    parser = launch_command_parser()
    options = {a.dest for a in parser._actions}
    for key in cfg.fsdp_config:
        assert (key if key.startswith("fsdp_") else f"fsdp_{key}") in options, key
    for key in cfg.deepspeed_config:
        assert key in options, key
    args, defaults, _ = _validate_launch_command(parser.parse_args(["--config_file", path, "x.py"]))
    assert args.num_processes == 2
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        env = prepare_deepspeed_cmd_env(args)[1]
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(cfg.deepspeed_config["zero_stage"])
        pytest.importorskip("deepspeed")
        from accelerate.utils import DeepSpeedPlugin

        with mock.patch.dict("os.environ", env):
            plugin = DeepSpeedPlugin()
        assert plugin.zero_stage == cfg.deepspeed_config["zero_stage"]
        assert plugin.gradient_accumulation_steps == 1  # the engine's one micro-batch per step
    else:
        env = prepare_multi_gpu_env(args)
        if args.use_fsdp:
            if not torch.cuda.is_available():  # checked against the device present: FSDP1
                env["FSDP_SYNC_MODULE_STATES"] = "false"  # broadcasts from a GPU
            with mock.patch.dict("os.environ", env):
                plugin = FullyShardedDataParallelPlugin()
            assert plugin.fsdp_version == cfg.fsdp_config["fsdp_version"]
            assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
