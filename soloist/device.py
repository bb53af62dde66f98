"""Where a model runs: picking the device, fitting batches to its memory, bf16 autocast,
samples back to the host.

Shared by the GPU stages (separate, augment, tokenize, accompany), so that each says ``auto``,
sizes its batches and reports running out of memory the same way.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def pick_device(device: str) -> torch.device:
    """``auto``: the first GPU if there is one, else the CPU; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fit_batch(most: int, item_bytes: float, free_bytes: float) -> int:
    """``most``, or as many items as fit in 70% of ``free_bytes`` when each one needs
    ``item_bytes`` at the forward pass's peak; at least 1."""
    return max(1, min(most, int(0.7 * free_bytes / item_bytes)))


def out_of_memory(stage: str, batch_size: int) -> RuntimeError:
    """The error for a batch the GPU had no room for, naming the setting to lower."""
    return RuntimeError(f"the GPU ran out of memory for a batch of {batch_size}: set "
                        f"{stage}.batch_size lower than {batch_size} (auto fits an idle GPU)")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision`` bf16, or auto on a GPU; else a no-op."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, torch.bfloat16)
    return contextlib.nullcontext()


def pcm16(audio: torch.Tensor | np.ndarray) -> np.ndarray:
    """Host samples for ``io.write_audio``: a tensor is clipped and rounded to int16 where it
    is (as libsndfile would round it), so a GPU sends a quarter of the float32 audio."""
    if isinstance(audio, np.ndarray):
        return audio
    return (audio.clamp(-1, 1) * 32767).round().to(torch.int16).cpu().numpy()
