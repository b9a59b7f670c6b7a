"""Gradient policies: what happens to the gradients after backward, before the optimizer step.

Norms come back as tensors, so no policy forces a host-device sync; the Trainer reads them
only on the steps it logs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import torch
from torch import Tensor

from trainwire.errors import ConfigError
from trainwire.registry import INFINITY


class GradStats:
    """Gradient norms of one optimizer step: ``norm`` before the policy acted, ``clipped_norm`` after; ``finite``."""

    __slots__ = ("norm", "_max_norm", "_clipped", "read")

    def __init__(self, norm: Tensor, *, max_norm: float | None = None, clipped: Tensor | None = None) -> None:
        self.norm = norm
        self._max_norm = max_norm
        self._clipped = clipped
        self.read: float | None = None  # ``norm`` as a float once something has synced for it (``finite``)

    @property
    def finite(self) -> bool:
        """Whether every gradient is finite (a NaN or inf anywhere makes the total norm non-finite).

        Reading it syncs the device once (the norm's ``.item()``); on CPU that costs about
        0.5 µs, where ``bool(torch.isfinite(norm))`` costs about 11 µs.
        """
        self.read = self.norm.item()
        return math.isfinite(self.read)

    def norm_value(self) -> float:
        """``norm`` as a float: the one the finite check already read, else one host read now."""
        if self.read is None:
            self.read = self.norm.item()
        return self.read

    def clipped_value(self) -> float:
        """``clipped_norm`` as a float, worked out on the host from ``norm_value`` when the policy clipped by norm
        (the same coefficient as ``clip_grad_norm_``, in double precision: no tensor op on a logged step)."""
        if self._clipped is not None:
            return self._clipped.item()
        norm = self.norm_value()
        return norm if self._max_norm is None else norm * min(1.0, self._max_norm / (norm + 1e-6))

    @property
    def clipped_norm(self) -> Tensor:
        if self._clipped is not None:
            return self._clipped
        if self._max_norm is None:
            return self.norm
        # The same coefficient clip_grad_norm_ applied, so this is the norm it left behind;
        # computed only when asked for (on logged steps), not on every step.
        return self.norm * (self._max_norm / (self.norm + 1e-6)).clamp(max=1.0)


class GradientPolicy(ABC):
    """Port: inspects and may change ``.grad`` of the parameters in place."""

    @abstractmethod
    def apply(self, parameters: Sequence[Tensor]) -> GradStats:
        """Called after backward (and after unscaling), before ``optimizer.step``; returns the norms."""

    def state_dict(self) -> dict[str, Any]:
        """The state needed to continue exactly after a resume."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what ``state_dict`` returned."""


def _grads(parameters: Sequence[Tensor]) -> list[Tensor]:
    return [p.grad for p in parameters if p.grad is not None]


class NoClip(GradientPolicy):
    """Leaves gradients as they are; reports their total 2-norm."""

    def apply(self, parameters: Sequence[Tensor]) -> GradStats:
        return GradStats(torch.nn.utils.get_total_norm(_grads(parameters)))


class NormClipper(GradientPolicy):
    """Scales gradients so their total ``norm_type``-norm is at most ``max_norm`` (None: never).

    ``norm_type`` is a p-norm's p: at least 1 (below 1 it is no norm), or inf for the largest |gradient|.
    """

    def __init__(self, max_norm: float | None = 1.0, norm_type: Annotated[float, INFINITY] = 2.0) -> None:
        if max_norm is not None and not max_norm > 0:
            raise ConfigError(f"gradient.max_norm={max_norm} must be > 0 (or null for no clipping)")
        if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float)) or not norm_type >= 1:
            raise ConfigError(f"gradient.norm_type={norm_type!r} must be a number >= 1, or inf (the largest |gradient|)")
        self.max_norm, self.norm_type = max_norm, norm_type

    def apply(self, parameters: Sequence[Tensor]) -> GradStats:
        if self.max_norm is None:
            return GradStats(torch.nn.utils.get_total_norm(_grads(parameters), self.norm_type))
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.max_norm, self.norm_type, foreach=True)
        return GradStats(norm, max_norm=self.max_norm)


class ValueClipper(GradientPolicy):
    """Clamps every gradient element to [-clip_value, clip_value]."""

    def __init__(self, clip_value: float = 1.0) -> None:
        if not clip_value > 0:
            raise ConfigError(f"gradient.clip_value={clip_value} must be > 0")
        self.clip_value = clip_value

    def apply(self, parameters: Sequence[Tensor]) -> GradStats:
        grads = _grads(parameters)
        norm = torch.nn.utils.get_total_norm(grads)
        torch.nn.utils.clip_grad_value_(parameters, self.clip_value, foreach=True)
        return GradStats(norm, clipped=torch.nn.utils.get_total_norm(grads))
