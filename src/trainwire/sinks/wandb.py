"""Weights & Biases, through the real ``wandb`` client."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from trainwire.sinks.base import MetricsSink

WANDB_MODES = ("online", "offline", "disabled")
# wandb-core reports its own errors and traces over the network unless started with
# --no-observability, which wandb (0.31) passes only when this variable is false when the
# service starts: it has no Settings field for it.
_OBSERVABILITY = "WANDB_ERROR_REPORTING"
_LAUNCH = threading.Lock()


@contextlib.contextmanager
def _without_observability() -> Iterator[None]:
    """While ``wandb.init`` may start the wandb-core service: its telemetry off, then the variable as it was."""
    with _LAUNCH:
        before = os.environ.get(_OBSERVABILITY)
        os.environ[_OBSERVABILITY] = "false"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(_OBSERVABILITY, None)
            else:
                os.environ[_OBSERVABILITY] = before


class WandbSink(MetricsSink):
    """Logs to a W&B run: ``init`` at start, every metric with its step, the summary, ``finish``.

    ``wandb`` is imported when this sink is built, never when trainwire is imported.
    ``mode=offline`` writes the run locally for a later ``wandb sync`` and makes no network
    call: wandb-core's own telemetry is off when this sink starts it (ADR 0010). Where W&B's files go:
    ``dir`` when given (``sink.wandb.dir``), else the user's ``WANDB_DIR`` when set, else ``run_dir``.

    It leaves the process as it found it: ``wandb.init`` replaces ``sys.excepthook`` and
    ``sys.exit`` (they are put back at once: ``finish`` reports the exit code itself), and when
    W&B was not set up before the first of these sinks started, the last one to finish tears
    it down (its service process, ``WANDB_SERVICE``, its threads). An application that uses
    W&B itself calls ``wandb.setup()`` first, and then keeps it.
    """

    _lock = threading.Lock()  # guards the class-wide count below and the hooks wandb.init replaces
    _live = 0  # these sinks started and not yet finished, in this process
    _owns_setup = False  # whether the first of them set W&B up (so the last one tears it down)

    def __init__(
        self,
        project: str | None = "trainwire",
        entity: str | None = None,
        name: str | None = None,
        mode: str = "online",
        config: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        dir: str | None = None,
        *,
        run_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        with warnings.catch_warnings():  # what its dependencies' imports add to the filters is not the caller's
            import wandb  # heavy (~1 s): only runs that log to W&B pay for it

        from trainwire.errors import ConfigError

        if mode not in WANDB_MODES:
            raise ConfigError(f"sink.mode={mode!r} is not one of {', '.join(WANDB_MODES)}")
        self._wandb = wandb
        self._init_args = dict(
            project=project, entity=entity, name=name, mode=mode, config=dict(config or {}), tags=list(tags),
            dir=dir if dir is not None or run_dir is None or os.environ.get("WANDB_DIR") else str(run_dir),
        )  # dir None with WANDB_DIR set: wandb.init reads the user's WANDB_DIR itself
        self.run = None
        self._warned_no_pil = False

    def start(self) -> None:
        from wandb.sdk import wandb_setup

        cls = type(self)
        with cls._lock:
            if cls._live == 0:
                cls._owns_setup = getattr(wandb_setup, "_singleton", None) is None  # no public "is set up"
            cls._live += 1
            hooks = sys.excepthook, sys.exit
            try:
                # reinit: a service may fit several models in one process, each its own W&B run.
                quiet = _without_observability() if self._init_args["mode"] == "offline" else contextlib.nullcontext()
                with quiet:
                    self.run = self._wandb.init(**self._init_args, reinit="create_new")
            except BaseException:
                self._release()
                raise
            finally:
                sys.excepthook, sys.exit = hooks

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        self.run.log({**metrics, "epoch": epoch}, step=step)

    def log_image(self, key: str, image: Any, *, step: int, epoch: int) -> None:
        try:
            import PIL.Image  # noqa: F401 - wandb.Image needs it; wandb does not install it
        except ImportError:
            if not self._warned_no_pil:  # one warning, and the metrics go on (failing here would drop them all)
                self._warned_no_pil = True
                from trainwire import logs

                logs.get_logger().warning("wandb_images_skipped", reason="Pillow is not installed")
            return
        self.run.log({key: self._wandb.Image(image), "epoch": epoch}, step=step)

    def log_histograms(self, values: Mapping[str, Any], *, step: int, epoch: int) -> None:
        # commit=False: the loop's own log at this step (if any) completes the same W&B step.
        self.run.log({key: self._wandb.Histogram(value.numpy()) for key, value in values.items()}, step=step,
                     commit=False)

    def summary(self, values: Mapping[str, Any]) -> None:
        self.run.summary.update(dict(values))

    def finish(self, status: str = "finished") -> None:
        if self.run is not None:
            self.run, run = None, self.run
            try:
                run.finish(exit_code=0 if status == "finished" else 1)
            finally:
                with type(self)._lock:
                    self._release()

    def _release(self) -> None:
        """One sink fewer; the last one tears down the W&B it set up. Called under ``_lock``."""
        cls = type(self)
        cls._live -= 1
        if cls._live == 0 and cls._owns_setup:
            cls._owns_setup = False
            _teardown(self._wandb)


def _teardown(wandb: Any) -> None:
    """Stops the W&B service, its connection threads and its analytics exporters; clears ``WANDB_SERVICE``."""
    wandb.teardown()
    # wandb (0.2x-0.31) starts OpenTelemetry exporter threads at the first run and stops them
    # only at exit; there is no public call for it, so reach for the proxy when it exists.
    try:
        from wandb.analytics.opentelemetry import opentelemetry_proxy
    except ImportError:
        return
    proxy = getattr(opentelemetry_proxy, "_singleton_telemetry_proxy", None)
    if proxy is not None and hasattr(proxy, "shutdown"):
        proxy.shutdown(timeout_millis=5_000)
