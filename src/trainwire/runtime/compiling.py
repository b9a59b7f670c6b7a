"""``trainer.compile``: the model that runs forward goes through ``torch.compile`` once, and recompilations are counted.

``Compiler`` wraps a module in ``torch.compile`` (an ``OptimizedModule`` that shares the
module's parameters), so the optimizers, the checkpoint and the best weights keep working on
the plain module: checkpoint keys never carry ``_orig_mod.``, and a compiled run resumes
uncompiled and the reverse. Compilation itself happens on the first call (the first training
step, then validation's first batch, which runs in eval mode and compiles a second graph).

While a fit runs, the compiler listens to Dynamo's compile-start callbacks: a compile whose id
is ``frame/n`` with ``n > 0`` compiled a frame again (a guard failed: a new shape, dtype,
mode or Python value), which is a recompilation. The listener is process-wide while it is
installed (another thread compiling at the same time is counted too) and is removed when the
fit ends. ADR 0019 records the choices.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import torch
from torch import nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_COMPILE_ID = re.compile(r"(\d+)/(\d+)")


class Compiler:
    """``torch.compile`` with one mode for a run, and a count of the recompilations it causes."""

    def __init__(self, mode: str | None) -> None:
        self.mode = mode  # checked where it is configured (TrainerSettings: trainer.compile_mode)
        self.compiles = self.recompiles = 0
        self._reported = 0
        self._lock = threading.Lock()

    def __call__(self, module: nn.Module) -> nn.Module:
        """``module`` compiled (lazily: the work happens on its first call)."""
        return torch.compile(module, mode=self.mode)

    def _on_start(self, args: Any) -> None:
        from torch._dynamo.callback import CallbackTrigger

        if args.callback_trigger is not CallbackTrigger.DYNAMO:
            return  # a lazily compiled backward, or autotuning: part of a compile already counted
        match = _COMPILE_ID.fullmatch(str(args.compile_id))
        with self._lock:
            self.compiles += 1
            if match is not None and int(match.group(2)) > 0:
                self.recompiles += 1

    def listen(self) -> None:
        """Starts counting (called once per fit, before the first step)."""
        torch._dynamo.callback_handler.register_start_callback(self._on_start)

    def stop(self) -> None:
        """Stops counting (when the fit ends, however it ends)."""
        try:
            torch._dynamo.callback_handler.remove_start_callback(self._on_start)
        except ValueError:
            pass

    def report(self, metrics: dict[str, float], log: Any, epoch: int) -> None:
        """Adds ``compile/recompiles`` to an epoch's metrics; logs once, the first time there are any."""
        metrics["compile/recompiles"] = float(self.recompiles)
        if self.recompiles and not self._reported:
            self._reported = self.recompiles
            log.info("compile_recompiled", epoch=epoch, recompiles=self.recompiles, compiles=self.compiles,
                     note="validation's eval mode compiles once more; more than that: set TORCH_LOGS=recompiles "
                          "to see which guard failed")
