"""Batches made ahead of the trainer in worker processes, handed over through shared memory.

Worker w of k makes steps ``start + w, start + w + k, ...`` and writes each batch's buffer
(``Batch.to_buffer``) into one of its own ``prefetch`` shared-memory slots; only the slot number
travels through a queue. The trainer takes steps in order, copies the batch out of the slot
(into pinned memory when CUDA is available) and gives the slot back. A worker is at most
``prefetch`` batches ahead, and owns its slots, so no worker can starve another. A batch larger
than a slot (slots are sized from the first batch, with room to spare) travels through the queue
instead. Pickling a ~400 KB batch through a pipe, as ``torch.utils.data.DataLoader`` does, costs
the trainer about as much as making the batch on a busy 2-core machine; a slot costs a memcpy.
"""

from __future__ import annotations

import queue
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from .batch import Batch

#: Slots are this many times the first batch's size (rows of a padded batch vary in length).
SLOT_ROOM = 2.0


def _work(
    make: Callable[[int], Batch],
    first: int,
    every: int,
    slots: list[torch.Tensor],
    free: Any,
    ready: Any,
) -> None:
    """A worker process: make steps first, first + every, ...; announce each on ``ready``."""
    torch.set_num_threads(1)  # as DataLoader workers: the trainer owns the cores' threads
    step = first
    try:
        while True:
            layout, buf = make(step).to_buffer()
            slot = free.get()
            if len(buf) <= slots[slot].numel():
                slots[slot][: len(buf)] = torch.from_numpy(buf)
                ready.put((step, slot, layout, len(buf)))
            else:
                free.put(slot)
                ready.put((step, None, layout, buf))
            step += every
    except Exception:  # noqa: BLE001 (re-raised in the trainer's process, with the traceback)
        ready.put((step, "error", traceback.format_exc(), 0))


def prefetched(
    make: Callable[[int], Batch], start: int, workers: int, prefetch: int
) -> Iterator[Batch]:
    """``make(start), make(start + 1), ...`` made by ``workers`` processes, in order.

    Args:
        make: step -> Batch, a picklable callable (e.g. a bound ``PretrainLoader.batch``).
        start: the first step.
        workers: number of worker processes (>= 1).
        prefetch: batches each worker may have ready ahead of the trainer.
    """
    _, first = make(start).to_buffer()  # size the slots (this batch is made again, by worker 0)
    size = int(len(first) * SLOT_ROOM) + 4096
    ctx = mp.get_context()
    slots = [
        [torch.empty(size, dtype=torch.uint8).share_memory_() for _ in range(prefetch)]
        for _ in range(workers)
    ]
    free = [ctx.Queue() for _ in range(workers)]
    ready = ctx.Queue()
    for w in range(workers):
        for s in range(prefetch):
            free[w].put(s)
    procs = [
        ctx.Process(
            target=_work, args=(make, start + w, workers, slots[w], free[w], ready), daemon=True
        )  # fmt: skip
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    pin = torch.cuda.is_available()
    pending: dict[int, tuple] = {}
    step = start
    try:
        while True:
            while step not in pending:
                try:
                    item = ready.get(timeout=5.0)
                except queue.Empty:
                    dead = [p.exitcode for p in procs if not p.is_alive()]
                    if dead:
                        raise RuntimeError(f"a data worker process exited ({dead})") from None
                    continue
                pending[item[0]] = item
            _, slot, layout, payload = pending.pop(step)
            w = (step - start) % workers
            if isinstance(slot, str):
                raise RuntimeError(f"data worker {w} failed:\n{layout}")
            if slot is None:
                buf = torch.from_numpy(np.asarray(payload))
                buf = buf.pin_memory() if pin else buf
            else:
                buf = torch.empty(payload, dtype=torch.uint8, pin_memory=pin)
                buf.copy_(slots[w][slot][:payload])
                free[w].put(slot)
            step += 1
            yield Batch.from_buffer(layout, buf)
    finally:  # the trainer stopped iterating: the workers' unfinished batches are not needed
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
