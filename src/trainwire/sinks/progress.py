"""A progress bar (tqdm) over epochs and the steps of each epoch, fed by the logged records."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from typing import IO

from trainwire.errors import ConfigError
from trainwire.sinks.base import MetricsSink


class ProgressBar(MetricsSink):
    """Two tqdm bars: epochs of the run, and optimizer steps of the current epoch, with loss, lr and ``monitor``.

    It is a sink, so it only hears from the loop on logged steps (every
    ``trainer.log_every_n_steps``) and at the end of each epoch: it adds no device sync and no
    per-batch work. Its step bar moves in jumps of ``log_every_n_steps``; the steps of an
    epoch are known after the first one. ``tqdm`` is imported when the bar is built.
    """

    name = "progress"

    def __init__(self, max_epochs: int, monitor: str | None = None, file: IO[str] | None = None) -> None:
        from tqdm.auto import tqdm

        # A class of this bar's own: tqdm starts a monitor thread per bar class that lives until the process
        # exits; this one's is ended by ``finish``, so a run leaves no thread behind (README, "No trace left").
        tqdm = type("tqdm", (tqdm,), {"monitor": None})
        self._tqdm, self.max_epochs, self.monitor = tqdm, max_epochs, monitor
        self.file = file
        self.epochs = self.steps = None
        self._epoch_start_step = self._steps_per_epoch = 0
        self._postfix: dict[str, str] = {}

    def start(self) -> None:
        out = self.file or sys.stderr
        self.epochs = self._tqdm(total=self.max_epochs, desc="epochs", unit="epoch", file=out, position=0)
        self.steps = self._tqdm(total=None, desc="epoch 0", unit="step", file=out, position=1, leave=False)
        self._epoch_start_step = self._steps_per_epoch = 0

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        loss = _find(metrics, "train/loss")  # by suffix: a staged run logs pre/train/loss
        if loss is not None:  # a logged step
            self.steps.update(step - self._epoch_start_step - self.steps.n)
            self._postfix.update({"loss": f"{loss:.4g}", "lr": f"{_find(metrics, 'train/lr') or 0:.3g}"})
            self.steps.set_postfix(self._postfix, refresh=False)
            return
        # The epoch's record: the step bar starts over; the epoch bar moves on.
        self._steps_per_epoch = self._steps_per_epoch or step - self._epoch_start_step
        self.steps.total = self._steps_per_epoch
        self.steps.update(step - self._epoch_start_step - self.steps.n)  # the epoch's last, unlogged steps
        self.steps.refresh()  # once an epoch: show it complete whatever tqdm's own rate limit says
        self._epoch_start_step = step
        self.steps.set_description(f"epoch {epoch + 1}", refresh=False)
        self.steps.reset(total=self._steps_per_epoch)
        monitored = _find(metrics, self.monitor) if self.monitor else None
        if monitored is not None:
            self._postfix[self.monitor] = f"{monitored:.4g}"
        self.epochs.set_postfix(self._postfix, refresh=False)
        self.epochs.update(1)

    def finish(self, status: str = "finished") -> None:
        for bar in (self.steps, self.epochs):
            if bar is not None:
                bar.close()
        self.steps = self.epochs = None
        monitor, self._tqdm.monitor = self._tqdm.monitor, None
        if monitor is not None:
            monitor.exit()  # wakes it and joins it

    @property
    def text(self) -> str:
        """What the bars show now, for tests and logs."""
        return "\n".join(str(bar) for bar in (self.epochs, self.steps) if bar is not None)


def _find(metrics: Mapping[str, float], name: str) -> float | None:
    for key, value in metrics.items():
        if key == name or key.endswith("/" + name):
            return value
    return None


def progress_enabled(setting: str, stream: IO[str] | None = None) -> bool:
    """``always``, ``never``, or ``auto``: on when ``stream`` (stderr) is a terminal and tqdm is installed."""
    installed = importlib.util.find_spec("tqdm") is not None
    if setting == "auto":
        stream = stream or sys.stderr
        return installed and bool(getattr(stream, "isatty", lambda: False)())
    if setting == "always" and not installed:
        raise ConfigError("progress=always needs tqdm, which is not installed (pip install tqdm; trainwire depends on it)")
    return setting == "always"
