"""Work shared by the processes of one ``accelerate launch`` (or ``torchrun``): data parallel, through
accelerate's process state and ``torch.distributed``.

Training keeps one replica of the model per process and splits each batch between them (``shard``);
evaluation splits the utterances and gathers the outputs back in their original order
(``map_in_order``), so a launch of N processes returns what one process would, on every process.
Cached work that every process takes part in (a walk's healed and decoded points) is looked up and
stored by the first process alone (``cached_json_together``).
A plain ``python`` process never starts a process group: everything here is then the identity.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def process_state():
    """accelerate's state of this launch (joining the process group on first use), or None in a process
    no launcher started as one of several (WORLD_SIZE unset or 1). ``cpu`` as in ``training.train``:
    without CUDA the processes meet over gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """Whether this process speaks for the launch (prints, writes the files a user asked for): the first of
    several, or a plain process."""
    state = process_state()
    return state is None or state.is_main_process


def main_process_first():
    """A context whose block the first process of a launch runs before the others, which then find what it
    cached (features, angles) instead of waiting at the cache's lock; a plain process: no-op."""
    state = process_state()
    return contextlib.nullcontext() if state is None else state.main_process_first()


def process_device() -> torch.device | None:
    """The device accelerate gives this process under a launch (``cuda:<local rank>``, or the CPU), None in
    a plain process (where the caller's choice stands)."""
    state = process_state()
    return None if state is None else state.device


def shard(batch: Sequence[int], rank: int, world: int) -> tuple[list[int], float]:
    """This process's examples of a batch (every ``world``-th, from ``rank``) and their weight in the loss.

    A batch smaller than the launch leaves a process nothing; it then runs the batch's first example with
    weight 0, because every replica must take part in each gradient exchange."""
    mine = list(batch[rank::world])
    return (mine, 1.0) if mine else (list(batch[:1]), 0.0)


def map_in_order(fn: Callable[[list[T]], Sequence[R]], items: Sequence[T],
                 cost: Callable[[T], float] | None = None) -> list[R]:
    """``fn(items)``, computed in parts by the processes of a launch, returned whole and in ``items``' order
    on every process. ``fn`` must map a list to one result per item, each independent of the others in
    its list (as batched greedy decoding is). The items are dealt out by descending ``cost`` (e.g. frames),
    so every process gets long and short ones alike."""
    state = process_state()
    if state is None or state.num_processes == 1:
        return list(fn(list(items)))
    from accelerate.utils import gather_object

    order = sorted(range(len(items)), key=lambda i: -cost(items[i])) if cost else list(range(len(items)))
    mine = order[state.process_index :: state.num_processes]
    results = list(fn([items[i] for i in mine])) if mine else []
    out: list = [None] * len(items)
    for i, result in gather_object(list(zip(mine, results))):
        out[i] = result
    return out


def cached_json_together(path: str | os.PathLike, compute: Callable[[], Any]) -> Any:
    """``cache.cached_json`` for work that every process of a launch must do together (a healing run, an
    evaluation dealt out to the processes). Under ``cached_json`` each process would take the entry's lock,
    and the second would wait at it while the first waited for the second inside the work's collectives.
    Here the first process alone holds the lock and reads the entry, and tells the others whether it was
    there and what it held; on a miss all compute and the first stores the result. A plain process:
    ``cached_json``."""
    from speechllm_redundancy import cache

    state = process_state()
    if state is None or state.num_processes == 1:
        return cache.cached_json(path, compute)
    from accelerate.utils import broadcast_object_list

    with cache.entry_lock(Path(path)) if state.is_main_process else contextlib.nullcontext():
        told: list = [None]
        if state.is_main_process:
            stored = cache.load_json_entry(path, repair=True)
            told = [(False, None) if stored is cache.MISSING else (True, stored)]
        found, value = broadcast_object_list(told)[0]
        if found:
            return value
        value = compute()
        if state.is_main_process:
            cache.atomic_write_json(path, value, seal=True)
        state.wait_for_everyone()
    return value
