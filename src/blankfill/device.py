"""``resolve_device``: the one place a device name (``auto``, ``cpu``, ``cuda:1`` ...) is read."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto", local_rank: int = 0, *, key: str = "device") -> torch.device:
    """``auto``: ``cuda:local_rank`` when CUDA is available, else ``cpu``; or the named device.

    Args:
        name: ``auto`` or a torch device string.
        local_rank: this process's index on its machine (torchrun's ``LOCAL_RANK``), for ``auto``.
        key: the config key the name came from, named in the error (``train.device``).
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{key}: unknown device {name!r} (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key}={name!r} but CUDA is not available; use {key}=cpu")
    return device
