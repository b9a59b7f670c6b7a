"""Throughput and model FLOPs utilisation (MFU), measured per epoch without syncing the device per step.

``Throughput`` counts samples from each batch's shape (host metadata, no sync), and tokens
when batches are dicts that carry ``labels`` (those not ``-100``), an ``attention_mask`` or
``input_ids``; the token counts stay on the device until the epoch's end. The FLOPs of one
training step are counted once, on the first optimizer step of a fresh run (every micro-batch
of its accumulation window, all networks of the step), with
``torch.utils.flop_counter.FlopCounterMode``; what it counts (matrix multiplications,
convolutions, attention; not element-wise work or the optimizer) is ADR 0019's subject.
The count is per sample and saved in the checkpoint, so a resumed run does not count again.

Per epoch it reports ``time/samples_per_s`` and ``time/steps_per_s`` (all processes
together), ``time/tokens_per_s`` for token batches, ``time/tflops`` (per device: model FLOPs
done / training seconds) and ``time/mfu`` (that over the device's peak: ``peak_tflops`` when
given, else the table below for known GPUs), and ``memory/max_allocated_gib`` on CUDA.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import Tensor

# Dense bf16/fp16 tensor-core peaks in TFLOP/s, from the vendors' datasheets (no sparsity).
# Looked up by substring of torch.cuda.get_device_name(), first match wins: specific names first.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("A6000", 155.0), ("V100", 125.0), ("T4", 65.0),
    ("MI300X", 1307.0), ("MI250X", 383.0),
)


def peak_tflops(device: torch.device, configured: float | None = None) -> float | None:
    """The device's dense bf16 peak in TFLOP/s: ``configured`` when given, else the table's entry, else None."""
    if configured is not None:
        return float(configured)
    if device.type != "cuda":
        return None
    return peak_of(torch.cuda.get_device_name(device))


def peak_of(device_name: str) -> float | None:
    """The table's dense bf16 peak for a device name as CUDA reports it (``NVIDIA H100 80GB HBM3``), or None."""
    return next((peak for key, peak in PEAK_TFLOPS if key in device_name), None)


def _first_tensor(batch: Any) -> Tensor | None:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping):
        if isinstance(batch.get("input_ids"), Tensor):
            return batch["input_ids"]
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _samples(batch: Any) -> int:
    first = _first_tensor(batch)
    return first.shape[0] if first is not None and first.dim() else 1


def _tokens(batch: Any) -> Tensor | int | None:
    """Non-padding tokens of a dict batch (a 0-dim tensor on its device: no sync); None for other batches."""
    if not isinstance(batch, Mapping):
        return None
    labels, mask = batch.get("labels"), batch.get("attention_mask")
    if isinstance(labels, Tensor) and labels.dim() >= 2:
        return (labels != -100).sum()
    if isinstance(mask, Tensor):
        return mask.sum()
    ids = batch.get("input_ids")
    return ids.numel() if isinstance(ids, Tensor) else None


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: totals only, and no hooks on the modules.

    The tracker's backward hooks break ``torch.autograd.grad`` on a leaf input (an adversarial
    attack's gradient with respect to the inputs); the per-module breakdown is not needed here.
    """

    parents = ("Global",)

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *args: Any) -> None:
        return None


def _flop_counter() -> Any:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    return counter


class Throughput:
    """Samples, steps, tokens and FLOPs per second of training, one figure per epoch."""

    def __init__(self, peak_tflops: float | None) -> None:
        # Checked where it is configured (TrainerSettings: trainer.peak_tflops); None: the table's peak.
        self.configured_peak = peak_tflops
        self.flops_per_sample: float | None = None  # counted once, then saved with the checkpoint
        self.counted = False  # whether the FLOPs of a step are known (the loop then calls ``batch`` alone)
        self._counter: Any = None
        self._window_flops = self._window_samples = 0

    def start(self, device: torch.device, world_size: int) -> None:
        self.device, self.world_size = device, world_size
        self.peak = peak_tflops(device, self.configured_peak)

    def count(self, run: Callable[[Any, Any, int], Any], module: Any, batch: Any, index: int) -> Any:
        """``run(module, batch, index)`` (a step's ``train_step``) under the FLOP counter, until a counted step ends."""
        if self._counter is None:
            self._counter = _flop_counter()
            self._window_flops = self._window_samples = 0
        # Compiled code is opaque to the counter, and a compiled frame first called under a dispatch mode
        # is never compiled at all: the counted step runs eagerly, and compilation starts on the next.
        with torch.compiler.set_stance("force_eager"), self._counter:  # entering clears its counts: added up here
            result = run(module, batch, index)
        self._window_flops += self._counter.get_total_flops()
        self._window_samples += _samples(batch)
        if result.counted:
            self.flops_per_sample = self._window_flops / max(self._window_samples, 1)
            self.counted = True
            self._counter = None
        return result

    def start_epoch(self) -> None:
        self.samples, self.tokens, self.started = 0, None, time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def batch(self, batch: Any) -> None:
        """After each batch: its samples (host metadata) and tokens (kept on the device)."""
        if type(batch) is tuple or type(batch) is list:  # (inputs, targets): the common case, about 0.3 µs
            first = batch[0]
            if isinstance(first, Tensor) and first.dim():
                self.samples += first.shape[0]
                return
        self.samples += _samples(batch)
        tokens = _tokens(batch)
        if tokens is not None:
            self.tokens = tokens if self.tokens is None else self.tokens + tokens

    def end_epoch(self, steps: int) -> dict[str, float]:
        """The epoch's figures: called after its last batch, before validation."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the clock must see the work done, not queued (once an epoch)
        seconds = max(time.perf_counter() - self.started, 1e-9)
        figures = {"time/train_s": seconds, "time/samples_per_s": self.samples * self.world_size / seconds,
                   "time/steps_per_s": steps / seconds}
        if self.tokens is not None:
            figures["time/tokens_per_s"] = float(self.tokens) * self.world_size / seconds
        if self.flops_per_sample is not None:
            tflops = self.flops_per_sample * self.samples / seconds / 1e12
            figures["time/tflops"] = tflops
            if self.peak is not None:
                figures["time/mfu"] = tflops / self.peak
        if self.device.type == "cuda":
            figures["memory/max_allocated_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return figures

    def state_dict(self) -> dict[str, Any]:
        return {"flops_per_sample": self.flops_per_sample}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.flops_per_sample = state["flops_per_sample"]
        self.counted = self.flops_per_sample is not None
