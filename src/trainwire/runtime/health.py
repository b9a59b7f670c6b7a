"""Gradient health: a monitor that flags vanishing and exploding gradients, and a per-module watch.

A step reports each counted optimizer step's ``GradStats`` to the run's ``GradientHealth``
(after the gradient policy and the optimizer, before the gradients are cleared). Two policies
live behind it:

* ``GradientMonitor`` judges the total gradient norm. *Vanishing*: below ``vanishing_norm``
  for ``vanishing_steps`` steps in a row. *Exploding*: above ``exploding_factor`` times the
  median of the last ``window`` norms (once ``warmup`` norms have been seen). Each kind is
  warned about once (a structured ``gradient_vanishing`` / ``gradient_exploding`` record) and
  every flagged step is counted (``gradients/vanishing_steps``, ``gradients/exploding_steps``
  in the summary). It reads no tensor of its own on an unlogged step: when the non-finite
  guard has already read the norm (``GradStats.read``) it uses that float; otherwise it keeps
  the norm tensors and reads them together, once, on the next logged step or epoch end.
* The watch (``watch_every_n_steps``, off by default) logs ``grad_norm/<module path>`` and
  ``param_norm/<module path>`` for every module that holds parameters directly, and sends
  histograms of the gradients and weights to sinks that take them (``log_histograms``).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from trainwire.policies.gradients import GradStats


_INF = float("inf")


def _float(norm: Tensor) -> Tensor:
    full = getattr(norm, "full_tensor", None)  # a DTensor (FSDP): its global value
    return (full() if full is not None else norm).detach().float().reshape(())


class GradientMonitor:
    """Flags vanishing and exploding total gradient norms; its state is checkpointed, so a resume judges on."""

    def __init__(self, vanishing_norm: float, vanishing_steps: int, exploding_factor: float,
                 window: int = 100, warmup: int = 20) -> None:
        # The thresholds are trainer.grad_* keys: defaulted and checked in TrainerSettings, taken as given here.
        self.vanishing_norm, self.vanishing_steps, self.exploding_factor = vanishing_norm, vanishing_steps, exploding_factor
        self.warmup = warmup
        self.recent: deque[float] = deque(maxlen=window)
        self._ordered: list[float] = []  # ``recent`` sorted, kept by bisection: a median in O(1), not a sort a step
        self.small_in_a_row = self.vanishing = self.exploding = 0
        self.warned: set[str] = set()
        # Kept, not judged, on each step: (step, GradStats) until the next logged step or epoch end.
        # The list is appended to by ``GradientHealth`` directly (one C call a step) and never replaced.
        self.pending: list[tuple[int, GradStats]] = []

    def observe(self, step: int, grads: GradStats) -> None:
        """Keeps one counted optimizer step's norms, to be judged by ``judge``."""
        self.pending.append((step, grads))

    def judge(self, log: Any) -> None:
        """Judges the norms kept so far (one host read for those not read yet); called on logged steps and epoch ends."""
        if not self.pending:
            return
        kept = self.pending[:]
        self.pending.clear()
        unread = [grads.norm for _, grads in kept if grads.read is None]
        values = iter(torch.stack([_float(t) for t in unread]).tolist() if unread else ())
        # One loop over the plain floats, the policy's state in locals: no Python call a norm (``median``
        # and ``_remember``, inlined), but a warning's.
        small, vanishing, exploding = self.small_in_a_row, self.vanishing, self.exploding
        recent, ordered, window = self.recent, self._ordered, self.recent.maxlen
        for step, grads in kept:
            norm = grads.read if grads.read is not None else next(values)
            if norm != norm or norm in (_INF, -_INF):
                continue  # non-finite steps are the non-finite policy's
            small = small + 1 if norm < self.vanishing_norm else 0
            if small >= self.vanishing_steps:
                vanishing += 1
                self._warn_once(log, "gradient_vanishing", step=step, grad_norm=norm, below=self.vanishing_norm,
                                steps_in_a_row=small)
            count = len(recent)
            if count >= self.warmup:
                half = count // 2
                median = ordered[half] if count % 2 else (ordered[half - 1] + ordered[half]) / 2
                if median > 0 and norm > self.exploding_factor * median:
                    exploding += 1
                    self._warn_once(log, "gradient_exploding", step=step, grad_norm=norm, running_median=median,
                                    factor=self.exploding_factor)
            if count == window:
                del ordered[bisect.bisect_left(ordered, recent[0])]
            recent.append(norm)
            bisect.insort(ordered, norm)
        self.small_in_a_row, self.vanishing, self.exploding = small, vanishing, exploding

    def _remember(self, norm: float) -> None:
        if len(self.recent) == self.recent.maxlen:
            del self._ordered[bisect.bisect_left(self._ordered, self.recent[0])]
        self.recent.append(norm)
        bisect.insort(self._ordered, norm)

    def median(self) -> float:
        """The median of the last ``window`` norms."""
        ordered, half = self._ordered, len(self._ordered) // 2
        return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2

    def _warn_once(self, log: Any, event: str, **fields: Any) -> None:
        if event not in self.warned:
            self.warned.add(event)
            log.warning(event, **fields, note="warned once per run; every flagged step is counted in summary.json")

    def counts(self) -> dict[str, int]:
        return {"gradients/vanishing_steps": self.vanishing, "gradients/exploding_steps": self.exploding}

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "small_in_a_row": self.small_in_a_row, "vanishing": self.vanishing,
                "exploding": self.exploding, "warned": sorted(self.warned)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.recent.clear()
        self._ordered = []
        for norm in state["recent"]:
            self._remember(norm)
        self.small_in_a_row, self.vanishing, self.exploding = state["small_in_a_row"], state["vanishing"], state["exploding"]
        self.warned = set(state["warned"])
        self.pending.clear()


def module_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters grouped by the module that holds them directly, keyed by its path (the root is ``model``)."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            path = name.rpartition(".")[0] or "model"
            groups.setdefault(path, []).append(param)
    return groups


class GradientHealth:
    """What steps report gradients to; holds the run's monitor (or none) and the per-module watch (or none).

    ``start`` is called by the Trainer once per fit with the plain model, the loop's position
    (so that the watch counts the loop's optimizer steps) and the run's sink.
    """

    def __init__(self, monitor: GradientMonitor | None, watch_every_n_steps: int | None,
                 histograms: bool = True) -> None:
        self.monitor, self.every, self.histograms = monitor, watch_every_n_steps, histograms
        self._groups: dict[str, list[nn.Parameter]] = {}
        self._keep = monitor.pending.append if monitor is not None else None
        self._position: Any = None
        self._sink: Any = None
        self._log: Any = None

    def start(self, model: nn.Module, position: Any, sink: Any, log: Any) -> None:
        self._groups = module_groups(model) if self.every else {}
        self._position, self._sink, self._log = position, sink, log

    def gradients(self, grads: GradStats) -> None:
        """Called by a step once per counted optimizer step, after the optimizer, before the gradients are cleared."""
        step = self._position.step + 1  # the step this update is counted as (if it was taken)
        if self._keep is not None:
            self._keep((step, grads))  # the monitor's ``observe``, without the call: judged at the next log
        if self.every is not None and step % self.every == 0:
            self._watch(step)

    def judge(self) -> None:
        """On logged steps and epoch ends: lets the monitor read and judge what it kept."""
        if self.monitor is not None:
            self.monitor.judge(self._log)

    def _watch(self, step: int) -> None:
        paths = list(self._groups)
        grads = [[p.grad for p in self._groups[path] if p.grad is not None] for path in paths]
        params = [self._groups[path] for path in paths]
        # One norm per module (foreach: one kernel per list), stacked so the host reads them once.
        norms = [torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g))) if g else torch.zeros(())
                 for g in grads]
        weights = [torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.detach() for p in ps])))
                   for ps in params]
        values = torch.stack([_float(n) for n in norms + weights]).tolist()
        metrics = {f"grad_norm/{path}": value for path, value in zip(paths, values)}
        metrics.update((f"param_norm/{path}", value) for path, value in zip(paths, values[len(paths):]))
        epoch = self._position.epoch
        self._sink.log(metrics, step=step, epoch=epoch)
        log_histograms = getattr(self._sink, "log_histograms", None)  # optional on the port
        if self.histograms and log_histograms is not None:
            hist = {f"grad/{path}": torch.cat([x.detach().reshape(-1) for x in g]).float().cpu()
                    for path, g in zip(paths, grads) if g}
            hist.update((f"param/{path}", torch.cat([p.detach().reshape(-1) for p in ps]).float().cpu())
                        for path, ps in zip(paths, params))
            log_histograms(hist, step=step, epoch=epoch)

    def counts(self) -> dict[str, int]:
        """What the summary holds: the monitor's flagged steps (nothing without a monitor)."""
        return self.monitor.counts() if self.monitor is not None else {}

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor.state_dict()} if self.monitor is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.monitor is not None and "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])
