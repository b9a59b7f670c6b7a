"""Numeric precision of the forward pass: full fp32, bf16 autocast, or fp16 autocast with a grad scaler."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from trainwire.errors import ConfigError
from trainwire.policies.gradients import GradStats

PRECISIONS = ("32", "bf16", "16")
_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``auto`` means CUDA when present, else CPU; anything else is passed to torch as is."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"trainer.device={device!r} is not a device torch knows ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={device!r} but no CUDA device is present")
    return resolved


class Precision:
    """Runs the forward pass under autocast and backward through a grad scaler when fp16 needs one.

    fp16 without CUDA falls back to fp32 with one warning: CPU autocast in fp16 is slow and
    has no scaler to keep small gradients from vanishing.
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        precision = str(precision)
        if precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
        if precision == "16" and device.type != "cuda":
            warnings.warn(
                f"trainer.precision=16 needs CUDA; the device is {device.type}, so training runs in 32",
                RuntimeWarning,
                stacklevel=3,
            )
            precision = "32"
        self.precision = precision
        self.device = device
        self._dtype = _DTYPES.get(precision)
        self.autocasting = self._dtype is not None  # whether ``autocast`` enters torch.autocast (else a no-op)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16" else None

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        with torch.autocast(self.device.type, dtype=self._dtype):
            yield

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context that forward passes (training and validation) run in."""
        return contextlib.nullcontext() if self._dtype is None else self._autocast()

    def backward(self, loss: Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: Optimizer) -> None:
        """Brings gradients back to their true scale; called before the gradient policy sees them."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: Optimizer, grads: GradStats | None = None) -> bool:
        """Steps the optimizer unless the gradients are not finite; returns whether it stepped.

        Without a scaler, ``grads.finite`` is read on every step: one device sync per optimizer
        step, the price of keeping a NaN out of the weights. With fp16 the scaler makes the
        same decision from the gradients (and syncs for it anyway).
        """
        if self.scaler is None:
            if grads is not None and not grads.finite:
                return False
            optimizer.step()
            return True
        scale = self.scaler.get_scale()  # fp16 syncs here anyway: the scaler must read found_inf
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # the scaler lowers its scale exactly when it skipped

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
