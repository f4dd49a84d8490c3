"""Work that is not training, split over the processes of a launched run: each process takes a
contiguous share of the items and every process gets all the results back, in item order.

Evaluation decodes one response per prompt; under `accelerate launch` with N processes each
process decodes about 1/N of the prompts (the sampler's per-row streams, numbered by the row's
place in the whole list, make a row's response the same whoever decodes it), then the responses
are gathered so that scoring and reports see the whole list. Without a launcher it is a call.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from coachlm.engine.accel import launched

T = TypeVar("T")
R = TypeVar("R")


def share(n: int, rank: int, processes: int) -> range:
    """Process `rank`'s contiguous share of `n` items: the first n % N processes take one more."""
    k, extra = divmod(n, processes)
    start = rank * k + min(rank, extra)
    return range(start, start + k + (rank < extra))


def _state():
    import torch
    from accelerate import PartialState

    # gloo on CPUs (accelerate joins a CPU process group only when told cpu=True)
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """Whether this process writes a run's files (always, without a launcher)."""
    return not launched() or _state().is_main_process


def shard_map(fn: Callable[[list[T], int], list[R]], items: Sequence[T]) -> list[R]:
    """`fn(my_items, start)` on this process's share of `items` (`start`: the index of its first
    item in `items`), one result per item; the results of all processes concatenated in item
    order, on every process."""
    if not launched():
        return list(fn(list(items), 0))
    from accelerate.utils import gather_object

    state = _state()
    mine = share(len(items), state.process_index, state.num_processes)
    out = list(fn([items[i] for i in mine], mine.start))
    if len(out) != len(mine):
        raise ValueError(f"shard_map: {len(out)} results for {len(mine)} items")
    return list(gather_object(out))
