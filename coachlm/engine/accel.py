"""Where and how a run computes: one `Engine` over accelerate's `Accelerator` (the only module,
with `engine.loop` and `engine.checkpoint`, that touches accelerate or the distributed backends).

One process needs no launcher. Under `accelerate launch` (or torchrun) with N processes the
same command runs data-parallel: every process holds the model, takes its share of each step's
micro-batches, and accelerate's wrapper (DistributedDataParallel, FSDP or DeepSpeed, from
accelerate's own config) synchronizes the gradients. The wrapper must see the whole loss
computation in its `forward` (DDP arms its gradient hooks there, FSDP gathers parameters there),
but the trainers' losses call model methods (`rewards`, the backbone and head apart, LoRA views);
so the engine wraps *the loss function with the model* in one module (`_LossModule`) and hands
that to accelerate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from coachlm.cpus import free_cpus, usable_cpus
from coachlm.errors import CoachError
from coachlm.memory import keep_freed_memory


def resolve_device(device: str) -> torch.device:
    """auto: CUDA when visible, else CPU; cuda without a visible GPU is a user error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise CoachError("device cuda: no CUDA device is visible (use device auto or cpu)")
    if device not in ("auto", "cpu", "cuda"):
        raise CoachError(f"device must be auto, cpu or cuda, got {device!r}")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls beat fp32 here: CUDA with bf16 support, or a CPU with AMX tiles."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return device.type == "cpu" and amx is not None and bool(amx())


def set_threads(threads: int | None, processes: int = 1) -> int:
    """Set torch's intra-op threads: `threads`, else the cores this process may run on shared
    among the `processes` of this machine (N processes of all cores each oversubscribe); the
    cores are those of the affinity mask within the cgroup CPU quota (`coachlm.cpus`), and for
    one process only those that no other process keeps busy (`free_cpus`)."""
    n = threads or max(1, usable_cpus() // max(processes, 1))
    # several processes of one job would see each other busy; one core has nothing to leave out
    if not threads and processes <= 1 and n > 1:
        n = max(1, min(n, len(free_cpus())))
    torch.set_num_threads(n)
    return n


def launched() -> bool:
    """Whether a launcher (accelerate launch, torchrun) started this process among several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def _fsdp_on_cpu(accelerator: Any) -> None:
    """Turn a multi-CPU (gloo) accelerator into accelerate's FSDP.

    accelerate (1.16, state.py `AcceleratorState.__init__`) promotes a run to FSDP only when its
    process group is one of accelerators (MULTI_GPU, MULTI_XPU, ...), never MULTI_CPU, so an
    FSDP config launched on CPUs silently ran plain DDP. torch's FSDP2 (`fully_shard`) itself
    shards over gloo on the CPU, and accelerate's `fsdp2_prepare_model` needs nothing but the
    state's distributed type and plugin: set those, as accelerate would have from the launcher's
    environment (FSDP_* variables)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise CoachError("FSDP on the CPU needs fsdp_version: 2 (FSDP1 wraps with a CUDA "
                         "device); see examples/accelerate/fsdp_cpu2.yaml")
    state = accelerator.state
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


@contextlib.contextmanager
def _unsharded(root: Any, reshard_after_forward: bool) -> Iterator[None]:
    """FSDP2 (`fully_shard`): every shard group all-gathered and kept whole for the block.

    Whole, and kept whole: work outside the wrapper (sampling, evaluation) calls the sharded
    layers directly, whose forward hooks would otherwise gather and free their weights per
    call -- a collective per layer and decode step, which deadlocks when processes sample
    different numbers of tokens. Every process must enter the block (the gather is collective);
    the parameters are views of the gathered data, so changes inside are not written back."""
    from torch.distributed.fsdp import FSDPModule

    groups = [m for m in root.modules() if isinstance(m, FSDPModule)]
    # FSDP2 picks its root as the first module to run forward; a layer called here before any
    # training step (PPO's first rollout) would make itself a root, and the wrapper's first
    # forward then fails ("requires running forward through the root module first").
    root._get_fsdp_state()._lazy_init()
    root.set_reshard_after_forward(False)
    for m in groups:
        m.unshard()
    param_groups = [g for m in groups for g in m._get_fsdp_state()._fsdp_param_groups]
    _state_dict_hooks(param_groups, on=False)
    try:
        yield
    finally:
        _state_dict_hooks(param_groups, on=True)
        for m in groups:
            m.reshard()
        root.set_reshard_after_forward(bool(reshard_after_forward))
        root.set_reshard_after_forward(False, recurse=False)  # FSDP2's choice for the root


def _state_dict_hooks(param_groups: list[Any], on: bool) -> None:
    """FSDP2's state-dict hooks on (as `fully_shard` registers them) or off.

    FSDP2 makes `state_dict()` return the *sharded* parameters (a pre-hook swaps them in),
    and reading a sharded tensor's storage is a collective, so one process saving (transformers
    and peft call `state_dict()`) would wait forever for the others. While the weights are
    whole, the hooks are off and `state_dict()` returns them whole. torch (2.13) has no public
    switch: these are `FSDPParamGroup`'s own handle tables, rebuilt by its own registration."""
    for g in param_groups:
        if on:
            g._register_state_dict_hooks()
            continue
        for table in (g._module_to_pre_save_state_dict_hook_handle,
                      g._module_to_pre_load_state_dict_hook_handle):
            for handle in table.values():
                handle.remove()
            table.clear()


class _LossModule(nn.Module):
    """The model and a loss function as one module, so the distributed wrapper's `forward`
    covers everything the loss does with the model."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], Any]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Any:
        return self.loss_fn(self.model, batch)


def to_device(x: Any, device: torch.device) -> Any:
    """Tensors anywhere in `x` (dataclasses, tuples, lists, dicts) moved to `device`."""
    if device.type == "cpu":
        return x  # batches are built on the CPU
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: to_device(getattr(x, f.name), device)
                                         for f in dataclasses.fields(x) if f.init})
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


class Engine:
    """Device, precision and the process group of one run, over an `Accelerator`."""

    def __init__(self, device: str = "auto", bf16: bool | None = None, fp16: bool = False):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, PartialState

        dev = resolve_device(device)
        precision = "fp16" if fp16 else "bf16" if (fast_bf16(dev) if bf16 is None else bf16) else "no"
        if not launched() and AcceleratorState._shared_state:
            # accelerate keeps one state per process and refuses to change its precision or
            # device; a single process may run several trainings (tests, the demo), each
            # with its own settings, and has no process group to lose.
            AcceleratorState._reset_state(reset_partial_state=True)
            PartialState._reset_state()
        self.accelerator = Accelerator(cpu=dev.type == "cpu", mixed_precision=precision)
        self.precision = precision
        if dev.type == "cpu" and launched() and _env_flag("ACCELERATE_USE_FSDP"):
            _fsdp_on_cpu(self.accelerator)

    @classmethod
    def from_config(cls, cfg: Any) -> "Engine":
        """An engine for a config with `device`, `bf16` and (optionally) `fp16` fields."""
        return cls(getattr(cfg, "device", "auto"), cfg.bf16, getattr(cfg, "fp16", False))

    # ------------------------------------------------------------------------- the processes

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def distributed_type(self) -> str:
        return str(self.accelerator.distributed_type.value)

    def threads(self, requested: int | None) -> int:
        """`set_threads` for the processes this machine runs."""
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        return set_threads(requested, local)

    def barrier(self) -> None:
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of `values` over all processes (float64)."""
        if self.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(t, reduction="sum").tolist()

    def gather_rows(self, x: Tensor, pad_value: float = 0, left: bool = False) -> Tensor:
        """Concatenate every process's `x` (rows first) in rank order; dimension 1, if any, is
        padded to the widest (`left`: padding before the data)."""
        if self.world_size == 1:
            return x
        if x.dim() > 1:
            x = self.accelerator.pad_across_processes(x, dim=1, pad_index=pad_value, pad_first=left)
        sizes = self.accelerator.gather(torch.tensor([x.shape[0]], device=self.device)).tolist()
        width = max(sizes)
        if x.shape[0] < width:  # gather needs equal shapes: pad rows, cut them off after
            filler = torch.full((width - x.shape[0], *x.shape[1:]), pad_value, dtype=x.dtype,
                                device=x.device)
            x = torch.cat([x, filler])
        out = self.accelerator.gather(x.to(self.device))
        return torch.cat([out[r * width: r * width + n] for r, n in enumerate(sizes)]).cpu()

    def shard(self, n: int) -> range:
        """This process's contiguous share of `n` items (n must divide evenly)."""
        if n % self.world_size:
            raise CoachError(f"{n} items do not split evenly over {self.world_size} processes")
        k = n // self.world_size
        return range(self.rank * k, (self.rank + 1) * k)

    # ----------------------------------------------------------------------- model and batches

    def place(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def to_device(self, batch: Any) -> Any:
        return to_device(batch, self.device)

    def prepare(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], Any],
                optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        """(wrapped loss module, wrapped optimizer): `wrapped(batch)` runs `loss_fn(model, batch)`
        under the distributed wrapper and the precision's autocast."""
        if self.deepspeed:
            ds = self.accelerator.state.deepspeed_plugin.deepspeed_config
            if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
                # accelerate reads it from a dataloader and refuses to prepare without one; the
                # engine deals the micro-batches itself, DeepSpeed only does its batch
                # bookkeeping with the number (found running ZeRO-2 on CPUs; untested on GPUs)
                ds["train_micro_batch_size_per_gpu"] = 1
        wrapped, opt = self.accelerator.prepare(_LossModule(model, loss_fn), optimizer)
        self._wrapped = wrapped
        keep_freed_memory()  # each step's activations and gradients reuse the last step's pages
        return wrapped, opt

    def release(self, wrapped: nn.Module) -> None:
        """Drop accelerate's references to a finished run's wrapper and optimizer (a sharded
        run keeps its wrapper, which `full_params` needs to save the final weights)."""
        if not self.sharded:
            self._wrapped = None
            self.accelerator.free_memory()

    @property
    def sharded(self) -> bool:
        """FSDP or DeepSpeed: parameters, gradients or optimizer states live in shards."""
        return self.distributed_type in ("FSDP", "DEEPSPEED")

    @property
    def deepspeed(self) -> bool:
        return self.distributed_type == "DEEPSPEED"

    def full_params(self) -> Any:
        """A context in which the model's own parameters are whole on every process, for work
        outside the wrapper's forward (sampling, the reference policy, evaluation, saving):
        FSDP1's summon_full_params, FSDP2's unshard, ZeRO-3's GatheredParameters; nothing
        otherwise."""
        wrapped = getattr(self, "_wrapped", None)
        if wrapped is None or not self.sharded:
            return contextlib.nullcontext()
        if self.deepspeed:
            import deepspeed

            module = wrapped.module if hasattr(wrapped, "module") else wrapped
            return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

        if isinstance(wrapped, FullyShardedDataParallel):
            return FullyShardedDataParallel.summon_full_params(wrapped, writeback=False)
        if isinstance(wrapped, FSDPModule):
            return _unsharded(wrapped, self.accelerator.state.fsdp_plugin.reshard_after_forward)
        return contextlib.nullcontext()

    def no_sync(self, wrapped: nn.Module, sync: bool) -> Any:
        """No gradient all-reduce for this backward unless `sync` (the step's last micro-batch)."""
        return contextlib.nullcontext() if sync or self.world_size == 1 \
            else self.accelerator.no_sync(wrapped)

    def autocast(self) -> Any:
        return self.accelerator.autocast()

    def backward(self, loss: Tensor) -> None:
        self.accelerator.backward(loss)

    def step(self, optimizer: Any, params: Sequence[Tensor], scale: float,
             max_norm: float) -> float:
        """One optimizer step on the gradients times `scale`, clipped to `max_norm` (inf: not
        clipped), then the gradients dropped. Returns the norm of the scaled gradients before
        clipping.

        The norm of s * g is s * |g|, and clipping multiplies by c = min(1, max_norm / that
        norm): so one norm pass over the raw gradients gives both, and s * c is applied once --
        inside torch's fused AdamW, which divides each gradient by its `grad_scale` as it reads
        it (the attribute GradScaler sets; torch/optim/adam.py `_fused_adam`), or else in one
        multiply pass. Scaling, then clipping, as separate passes cost two more read+write
        passes over all gradients per step (~15 ms of CPU in a ~350 ms world-25m bf16 step).
        """
        raw = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the plain one
        grads = [p.grad for p in params if p.grad is not None]
        if self.sharded or getattr(optimizer, "scaler", None) is not None or not grads:
            # FSDP/ZeRO norms need the shards' reduction, fp16 the loss scaler's unscaling and
            # inf check: accelerate's clipping on gradients scaled apart
            if grads and scale != 1:
                torch._foreach_mul_(grads, scale)
            norm = self._clip_grad_norm(params, max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return norm
        norm = scale * float(torch.nn.utils.get_total_norm(grads, foreach=True))
        # torch's clip_grad_norm_ coefficient, eps included; min keeps a NaN norm NaN, as there
        factor = torch.tensor(scale * min(max_norm / (norm + 1e-6), 1.0), dtype=torch.float32)
        if all(g.get("fused") for g in raw.param_groups):
            raw.grad_scale = factor.reciprocal().to(grads[0].device)
            try:
                optimizer.step()
            finally:
                del raw.grad_scale
        else:
            torch._foreach_mul_(grads, factor.item())
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def _clip_grad_norm(self, params: Sequence[Tensor], max_norm: float) -> float:
        """Clip the (loss-unscaled) gradients to `max_norm` (inf: only measure); their norm."""
        if self.sharded:
            # accelerate finds the FSDP model by comparing the list with the model's own
            # parameters (all of them, in order; FSDP2 then reduces the DTensor shards' norms)
            return float(self.accelerator.clip_grad_norm_(list(self._wrapped.parameters()),
                                                          max_norm))
        self.accelerator.unscale_gradients()
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True))

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """The main process runs the block first (e.g. writes a file), the others after it."""
        with self.accelerator.main_process_first():
            yield
