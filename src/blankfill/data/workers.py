"""Batches made ahead of the trainer in worker processes, handed over through shared memory.

Worker w of k makes steps ``start + w, start + w + k, ...`` and writes its j-th batch's buffer
(``Batch.to_buffer``) into its shared-memory slot ``j % prefetch``, once a semaphore says the
trainer has taken the batch that slot held; only the slot number and the layout travel, through
a pipe of the worker's own (no queue feeder threads competing with the trainer for the GIL). The
trainer takes steps in order, copies the batch out of the slot (into pinned memory when CUDA is
available) and releases the slot. A worker is at most ``prefetch`` batches ahead and owns its
slots, so no worker can starve another. A batch larger than a slot (slots are sized from the
first batch, with room to spare) travels through the pipe instead. Pickling a ~400 KB batch, as
``torch.utils.data.DataLoader`` does, costs the trainer about as much as making the batch on a
busy 2-core machine; a slot costs a memcpy.
"""

from __future__ import annotations

import itertools
import sys
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
        for j in itertools.count():
            layout, buf = make(step).to_buffer()
            free.acquire()  # the trainer has taken the batch slot j % prefetch held
            slot = j % len(slots)
            if len(buf) <= slots[slot].numel():
                slots[slot][: len(buf)] = torch.from_numpy(buf)
                ready.send((step, slot, layout, len(buf)))
            else:
                ready.send((step, None, layout, buf))
            step += every
    except Exception:  # noqa: BLE001 (re-raised in the trainer's process, with the traceback)
        ready.send((step, "error", traceback.format_exc(), 0))


def _receive(conn: Any, proc: Any, w: int) -> tuple:
    """The next message of worker ``w``; a clear error if its process died."""
    while not conn.poll(5.0):
        if not proc.is_alive():  # (other workers hold copies of its pipe: no end-of-file)
            raise RuntimeError(f"data worker {w} exited ({proc.exitcode})")
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"data worker {w} exited ({proc.exitcode})") from None


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
    free = [ctx.Semaphore(prefetch) for _ in range(workers)]
    pipes = [ctx.Pipe(duplex=False) for _ in range(workers)]  # (trainer's end, worker's end)
    procs = [
        ctx.Process(
            target=_work,
            args=(make, start + w, workers, slots[w], free[w], pipes[w][1]),
            daemon=True,
        )  # fmt: skip
        for w in range(workers)
    ]
    for p, (_, sender) in zip(procs, pipes, strict=True):
        p.start()
        sender.close()  # the worker's copy stays open: the pipe ends (EOFError) when it exits
    pin, finalizing = torch.cuda.is_available(), sys.is_finalizing  # (module globals go at exit)
    step = start
    try:
        while True:
            w = (step - start) % workers
            _, slot, layout, payload = _receive(pipes[w][0], procs[w], w)
            if isinstance(slot, str):
                raise RuntimeError(f"data worker {w} failed:\n{layout}")
            if slot is None:
                buf = torch.from_numpy(np.asarray(payload))
                buf = buf.pin_memory() if pin else buf
            else:
                buf = torch.empty(payload, dtype=torch.uint8, pin_memory=pin)
                buf.copy_(slots[w][slot][:payload])
            free[w].release()
            step += 1
            yield Batch.from_buffer(layout, buf)
    finally:  # the trainer stopped iterating: the workers' unfinished batches are not needed
        if not finalizing():  # at exit, multiprocessing ends the daemon processes itself
            for p in procs:
                p.terminate()
            for p in procs:
                p.join()
