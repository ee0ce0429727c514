"""Blank-infilling data: corruption transforms, batching, token stores and loaders.

Submodules ``store`` and ``loader`` (``TokenStore``, ``prepare``, ``PretrainLoader``) are imported
on use; the pure layout functions and the batch are re-exported here.
"""

from .baselines import build_causal, build_masked
from .batch import OBJECTIVES, Batch
from .corrupt import Example, build_blocks, build_suffix, reconstruct
from .objectives import Corruptor, RawSample
from .pack import collate_pack, collate_pad

__all__ = [
    "OBJECTIVES",
    "Batch",
    "Corruptor",
    "Example",
    "RawSample",
    "build_blocks",
    "build_causal",
    "build_masked",
    "build_suffix",
    "collate_pack",
    "collate_pad",
    "reconstruct",
]
