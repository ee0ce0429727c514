"""Blank-infilling data: corruption transforms, batching, token stores and loaders."""

from .batch import OBJECTIVES, Batch

__all__ = ["OBJECTIVES", "Batch"]
