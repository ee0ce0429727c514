"""Batches between processes: one buffer per batch, every field back intact, in both layouts."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import fields

import pytest
import torch

from blankfill.config import CorruptConfig, DataConfig
from blankfill.data.batch import Batch
from blankfill.data.loader import PretrainLoader

from .conftest import STUB_SPECIAL as SP


def _loader(store_dir, layout: str, workers: int = 0) -> PretrainLoader:
    dcfg = DataConfig(seq_len=96, batch_size=4, layout=layout, num_workers=workers, seed=3,
                      sample_across_doc=layout == "pad")  # fmt: skip
    ccfg = CorruptConfig(token_prob=0.5, sentence_prob=0.25, document_prob=0.25)
    return PretrainLoader(store_dir, dcfg, ccfg, SP)


def _same(a: Batch, b: Batch) -> None:
    for f in fields(Batch):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert (x is None) == (y is None), f.name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), f.name


@pytest.mark.parametrize("layout", ["pad", "pack"])
def test_buffer_round_trip_keeps_every_field(store_dir, layout):
    batch = _loader(store_dir, layout).batch(3)
    layout_, buffer = batch.to_buffer()
    assert buffer.ndim == 1 and buffer.dtype.itemsize == 1  # one flat byte buffer
    _same(Batch.from_buffer(layout_, buffer), batch)


@pytest.mark.slow
def test_workers_give_the_same_packed_batches(store_dir):
    ref = _loader(store_dir, "pack")
    par = iter(_loader(store_dir, "pack", workers=2))
    for step in range(4):
        _same(next(par), ref.batch(step))


def _tiny_batch(step: int) -> Batch:
    if step == 3:
        raise ValueError("no batch 3")
    ids = torch.full((2, 5), step)
    return Batch(input_ids=ids, labels=ids, loss_mask=torch.ones(2, 5),
                 position_ids=torch.zeros(2, 2, 5, dtype=torch.long), objective=ids,
                 sample_index=torch.tensor([step, step]), context_len=torch.tensor([2, 3]))  # fmt: skip


@pytest.mark.slow
def test_worker_batches_come_in_order_and_a_worker_error_is_raised():
    from blankfill.data.workers import prefetched

    it = prefetched(_tiny_batch, 0, workers=2, prefetch=2)
    assert [int(next(it).input_ids[0, 0]) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="no batch 3"):
        next(it)
    it.close()


def _growing_batch(step: int) -> Batch:
    if step == 4:
        os._exit(3)  # the worker process dies without a word
    batch = _tiny_batch(0)
    width = 5 if step < 2 else 50  # from step 2 on, larger than a slot: through the pipe
    ids = torch.full((2, width), step)
    return dataclasses.replace(batch, input_ids=ids, labels=ids, loss_mask=torch.ones(2, width),
                               objective=ids, position_ids=torch.zeros(2, 2, width,
                                                                       dtype=torch.long))  # fmt: skip


@pytest.mark.slow
def test_a_batch_larger_than_a_slot_still_arrives_and_a_dead_worker_is_named():
    from blankfill.data.workers import prefetched

    it = prefetched(_growing_batch, 0, workers=1, prefetch=2)
    got = [next(it) for _ in range(4)]
    assert [int(b.input_ids[0, 0]) for b in got] == [0, 1, 2, 3]
    assert [b.input_ids.shape[1] for b in got] == [5, 5, 50, 50]
    with pytest.raises(RuntimeError, match="data worker 0 exited"):
        next(it)
    it.close()
