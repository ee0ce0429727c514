"""The key/value cache of incremental decoding, extended in place by ``model.GLM``."""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys and values [B, H, S, Dh] in preallocated buffers, for incremental decoding.

    Unlike the official hidden-state "mems" (spec §1.8), each layer's K and V, so a decoding step
    costs one token's projections; the model appends in place, advancing ``length`` per forward.
    """

    def __init__(self, num_layers: int, capacity: int = 0) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.length = 0
        self.capacity = capacity

    def __len__(self) -> int:
        return self.length

    @property
    def batch_size(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Write this call's K, V [B, H, T, Dh] after the cached ones; return all [B, H, S, Dh]."""
        assert k.shape[2] > 0, "update needs at least one token"
        end = self.length + k.shape[2]
        buf_k, buf_v = self.keys[layer], self.values[layer]
        if buf_k is None or buf_k.shape[2] < end:
            cap = max(end, self.capacity, 2 * (0 if buf_k is None else buf_k.shape[2]))
            new_k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            new_v = v.new_empty(new_k.shape)
            if buf_k is not None:
                new_k[:, :, : self.length] = buf_k[:, :, : self.length]
                new_v[:, :, : self.length] = buf_v[:, :, : self.length]
            self.keys[layer], self.values[layer] = buf_k, buf_v = new_k, new_v
        buf_k[:, :, self.length : end] = k
        buf_v[:, :, self.length : end] = v
        return buf_k[:, :, :end], buf_v[:, :, :end]

    def advance(self, T: int) -> None:
        self.length += T

    def index_select(self, index: torch.Tensor) -> KVCache:
        """A new cache whose batch rows are ``index`` (beam reordering, expanding a shared Part A)."""
        out = KVCache(len(self.keys), self.capacity)
        out.length = self.length
        out.keys = [None if k is None else k.index_select(0, index) for k in self.keys]
        out.values = [None if v is None else v.index_select(0, index) for v in self.values]
        return out

    def truncate(self, length: int) -> None:
        """Forget everything after ``length`` tokens (e.g. to decode another span from Part A)."""
        assert 0 <= length <= self.length, f"cannot truncate a cache of {self.length} to {length}"
        self.length = length
