"""The pretraining loader: token store -> raw samples -> corruption -> batches, resumable.

The global sample stream is a fixed sequence: sample g belongs to epoch ``g // n`` (n windows per
epoch) and is built only from ``default_rng([seed, epoch, g % n])`` plus the epoch's window order
(a function of ``(seed, epoch)``). Rank r's step s takes the B samples starting at
``(s * world_size + r) * B``, so concatenating all ranks' batches step by step gives the same stream
for any world size, and any number of worker processes gives the same batches in the same order.
With ``corrupt.mix_per = "batch"`` each group of B consecutive samples shares one objective (and one
document-level length), drawn from ``default_rng([seed, epoch, index, 1])`` of its first sample.

The state (``state_dict``) is the number of samples consumed globally; resuming continues with the
exact next batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..config import CorruptConfig, DataConfig
from .batch import Batch
from .corrupt import Example
from .layout import Planned
from .objectives import Corruptor, choose_objective, draw_generation_len
from .pack import collate_plans
from .samples import SplitView, epoch_windows, raw_sample, raw_samples
from .seeding import SampleGenerators
from .store import TokenStore, special_to_dict
from .workers import prefetched

#: Documents are assigned to the validation split by this fixed seed (not data.seed), so changing
#: the data seed never moves documents between splits.
SPLIT_SEED = 20220317
#: Batches each worker process keeps ready ahead of the trainer.
PREFETCH = 4
#: Steps sampled and planned together by ``PretrainLoader.batch`` once it sees a regular stride.
AHEAD = 8


def split_documents(num_documents: int, valid_fraction: float, split: str) -> np.ndarray:
    """Sorted document ids of ``split`` ("train" or "valid") for a document-level split."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(num_documents)
    n_valid = int(round(valid_fraction * num_documents))
    if valid_fraction > 0:
        n_valid = min(max(n_valid, 1), num_documents - 1)
    docs = perm[:n_valid] if split == "valid" else perm[n_valid:]
    return np.sort(docs)


def check_special(store: TokenStore, special: Any) -> None:
    """Fail early when the trainer's special ids differ from those the store was made with."""
    mine, theirs = special_to_dict(special), store.manifest["special"]
    diff = [k for k in ("cls", "eos", "mask", "sop", "eop") if mine[k] != theirs.get(k)]
    if diff:
        raise ValueError(
            f"special token ids {diff} differ from those of the store {store.path} "
            f"({ {k: theirs.get(k) for k in diff} }); use the tokenizer the store was prepared with"
        )


class PretrainLoader:
    """Batches of corrupted samples from a token store, forever (epochs advance internally).

    Args:
        store_dir: the store folder (None or "": ``data_cfg.store``).
        data_cfg: the ``data`` config section.
        corrupt_cfg: the ``corrupt`` config section.
        special: special token ids (``SpecialTokens``), checked against the store's.
        rank: this process's data-parallel rank.
        world_size: number of data-parallel ranks.
        split: "train", or "valid": the held-out documents (``data.valid_fraction``) or the
            whole of ``data.valid_store`` when set.
    """

    def __init__(
        self,
        store_dir: str | Path | None,
        data_cfg: DataConfig,
        corrupt_cfg: CorruptConfig,
        special: Any,
        *,
        rank: int = 0,
        world_size: int = 1,
        split: Literal["train", "valid"] = "train",
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if split not in ("train", "valid"):
            raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
        path = store_dir or data_cfg.store
        if not path:
            raise ValueError("no token store given: set data.store (a `blankfill prepare` folder)")
        fraction = data_cfg.valid_fraction
        if split == "valid" and data_cfg.valid_store:
            path, fraction, split_docs = data_cfg.valid_store, 0.0, "train"
        elif split == "valid" and fraction == 0:
            raise ValueError("no validation data: set data.valid_fraction > 0 or data.valid_store")
        else:
            split_docs = split
        self.store = TokenStore(path)
        check_special(self.store, special)
        self.cfg, self.corrupt_cfg = data_cfg, corrupt_cfg
        self.rank, self.world_size, self.split = rank, world_size, split
        self.special = special
        self.view = SplitView(
            self.store, split_documents(self.store.num_documents, fraction, split_docs)
        )
        self.corruptor = Corruptor(corrupt_cfg, special)
        self.samples_per_epoch = max(1, self.view.num_tokens // max(1, data_cfg.seq_len - 1))
        self._windows: tuple[int, np.ndarray, float] | None = None
        self._rngs = SampleGenerators(data_cfg.seed)  # default_rng([seed, epoch, i]), faster
        self._step = 0
        self._planned: dict[int, list[Example | Planned]] = {}  # steps planned ahead (AHEAD)
        self._last: int | None = None  # the step of the last ``batch`` call

    # -- the pure stream ------------------------------------------------------------------------
    def _epoch_windows(self, epoch: int) -> tuple[np.ndarray, float]:
        if self._windows is None or self._windows[0] != epoch:
            self._windows = (
                epoch,
                *epoch_windows(self.view.num_tokens, self.cfg.seq_len, self.cfg.seed, epoch),
            )
        return self._windows[1], self._windows[2]

    def raw(self, g: int) -> tuple[Any, np.random.Generator]:
        """Global sample g before corruption, and its generator (positioned after the draw)."""
        epoch, i = divmod(g, self.samples_per_epoch)
        rng = np.random.default_rng([self.cfg.seed, epoch, i])
        return self._raw(g, rng), rng

    def _anchor(self, g: int) -> int:
        """The split token that global sample g starts from."""
        n, total = self.samples_per_epoch, self.view.num_tokens
        epoch, i = divmod(g, n)
        perm, shift = self._epoch_windows(epoch)
        return min(int((perm[i] + shift) * total / n), total - 1)

    def _anchors(self, first: int, count: int) -> list[int]:
        """``[self._anchor(g) for g in range(first, first + count)]`` (the same float steps)."""
        n, total = self.samples_per_epoch, self.view.num_tokens
        epoch, i = divmod(first, n)
        if i + count > n:  # the range runs into the next epoch
            return [self._anchor(g) for g in range(first, first + count)]
        perm, shift = self._epoch_windows(epoch)
        at = ((perm[i : i + count] + shift) * total / n).astype(np.int64)
        return np.minimum(at, total - 1).tolist()

    def _raw(self, g: int, rng: np.random.Generator) -> Any:
        return raw_sample(
            self.view, self._anchor(g), rng, seq_len=self.cfg.seq_len, special=self.special,
            sample_across_doc=self.cfg.sample_across_doc, index=g,
        )  # fmt: skip

    def examples(self, first: int, count: int) -> list[Example]:
        """Global samples ``first .. first+count-1``, corrupted (one objective group)."""
        raws, rngs, group = self._raws([first], count)
        return self.corruptor.corrupt_batch(raws, rngs, **group)

    def _raws(
        self, firsts: list[int], count: int
    ) -> tuple[list[Any], list[np.random.Generator], dict]:
        """The raw samples ``first .. first+count-1`` of each of ``firsts``, end to end, their
        generators (one ``SampleGenerators`` call: valid until the next) and the group's draws
        (``mix_per = "batch"``: one group, so one first)."""
        ids = [g for first in firsts for g in range(first, first + count)]
        rngs = self._rngs([divmod(g, self.samples_per_epoch) for g in ids])  # as ``raw``'s
        raws = raw_samples(
            self.view, [a for first in firsts for a in self._anchors(first, count)], rngs,
            seq_len=self.cfg.seq_len, special=self.special,
            sample_across_doc=self.cfg.sample_across_doc, indices=ids,
        )  # fmt: skip
        group: dict[str, int | None] = {"objective": None, "generation_len": None}
        if self.corrupt_cfg.mix_per == "batch":
            assert len(firsts) == 1, "an objective drawn per batch is one group's"
            epoch, i = divmod(firsts[0], self.samples_per_epoch)
            grng = np.random.default_rng([self.cfg.seed, epoch, i, 1])
            group["objective"] = choose_objective(grng.random(), self.corrupt_cfg)
            lengths = [len(s) for s in raws]
            group["generation_len"] = draw_generation_len(
                grng, lengths, self.corrupt_cfg.document_min_ratio
            )
        return raws, rngs, group

    def batch(self, step: int) -> Batch:
        """This rank's batch at ``step`` (a pure function of the step): ``collate_pad`` or
        ``collate_pack`` of ``examples``, with the span samples laid straight into the rows.

        Once two calls show a regular stride (a loop, or a worker taking every n-th step) and the
        objective is drawn per sample, the next ``AHEAD`` steps at that stride are sampled and
        planned together, so numpy's per-call cost is paid once for all of them; each sample
        still makes only its own generator's draws, so every batch is the one made alone."""
        items = self._planned.pop(step, None)
        if items is None:
            stride = step - self._last if self._last is not None else 0
            steps = [step]
            if stride > 0 and self.corrupt_cfg.mix_per == "sample":
                steps = [step + k * stride for k in range(AHEAD)]
            self._planned = dict(zip(steps, self._plan_steps(steps), strict=True))
            items = self._planned.pop(step)
        self._last = step
        row = None
        if self.cfg.layout == "pack":
            longest = max(x.length if isinstance(x, Planned) else len(x) for x in items)
            row = max(self.cfg.pack_len or self.cfg.seq_len + self.cfg.seq_len // 4, longest)
        return collate_plans(items, self.corruptor.layout, row_len=row)

    def _plan_steps(self, steps: list[int]) -> list[list[Example | Planned]]:
        """The corrupted (span samples still ``Planned``) samples of this rank's ``steps``: all
        in one pass, or step by step where each batch draws its own objective."""
        B = self.cfg.batch_size
        firsts = [(s * self.world_size + self.rank) * B for s in steps]
        passes = [firsts] if self.corrupt_cfg.mix_per == "sample" else [[f] for f in firsts]
        out = []
        for group_firsts in passes:
            raws, rngs, group = self._raws(group_firsts, B)
            items = self.corruptor.corrupt_plans(raws, rngs, **group)
            out += [items[k * B : (k + 1) * B] for k in range(len(group_firsts))]
        return out

    # -- iteration and state --------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch of the next sample this rank will produce."""
        return self._next_global() // self.samples_per_epoch

    def _next_global(self) -> int:
        return (self._step * self.world_size + self.rank) * self.cfg.batch_size

    def __iter__(self) -> Iterator[Batch]:
        """Batches from the next step on. With ``data.num_workers`` > 0 they are made ahead of
        the trainer (``PREFETCH`` per worker) in worker processes and handed over through shared
        memory (``data.workers``), pinned when CUDA is available so the copy to the GPU overlaps
        compute; the batches and their order are the same as without workers."""
        if self.cfg.num_workers == 0:
            while True:
                batch = self.batch(self._step)
                self._step += 1
                yield batch
        for batch in prefetched(self.batch, self._step, self.cfg.num_workers, PREFETCH):
            self._step += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands: samples consumed by all ranks, and what must match on resume."""
        return {
            "samples_consumed": self._step * self.world_size * self.cfg.batch_size,
            "step": self._step,
            "seed": self.cfg.seed,
            "seq_len": self.cfg.seq_len,
            "samples_per_epoch": self.samples_per_epoch,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume after ``state``: the next batch is the one that would have followed."""
        for key in ("seed", "seq_len", "samples_per_epoch"):
            mine = self.state_dict()[key]
            if state.get(key) != mine:
                raise ValueError(
                    f"cannot resume the data stream: {key} was {state.get(key)}, now {mine} "
                    "(same store, data.seed and data.seq_len are needed for an exact resume)"
                )
        per_step = self.world_size * self.cfg.batch_size
        consumed = int(state["samples_consumed"])
        if consumed % per_step:
            raise ValueError(
                f"cannot resume: {consumed} samples consumed is not a multiple of "
                f"world_size * data.batch_size = {per_step}"
            )
        self._step = consumed // per_step
