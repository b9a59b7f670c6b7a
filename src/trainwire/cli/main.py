"""``trainwire`` on the command line: ``trainwire train [overrides…]``.

The Hydra entry point only builds the container and calls ``trainwire.containers.run``;
everything it does can be done from Python the same way.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

USAGE = """usage: trainwire train [hydra overrides ...]
       trainwire plot RUN_DIR [RUN_DIR ...] [-o curves.png]
       trainwire compare SWEEP_DIR | RUN_DIR [RUN_DIR ...] [--csv]
       trainwire lr-preview [hydra overrides ...] [-o lr.png]
       trainwire lr-find [hydra overrides ...] [--steps 100] [--start-lr 1e-7] [--end-lr 10] [-o lr_find.png]
       trainwire export-weights RUN_DIR|CHECKPOINT [-o model.pt]

  trainwire train                               train the default job (MLP on the bundled digits)
  trainwire train lr=constant optimizer.lr=0.01 override any key of the config
  trainwire train sink=[wandb,tensorboard]      several sinks at once (sink.wandb.mode=offline, ...)
  trainwire train --cfg job                     print the composed config
  trainwire train -m optimizer.lr=1e-3,3e-3     a Hydra sweep
  trainwire plot outputs/a outputs/b -o ab.png  loss, monitored metric, lr and grad norm of runs, as PNG
  trainwire compare multirun/2026-11-30/12-00-00 each run's overrides vs its best value, monitor, stop reason
  trainwire lr-preview lr.warmup_epochs=5       the lr curve a config would produce, without training
  trainwire lr-find data=diabetes objective=regression
                                                LR range test: suggests an optimizer.lr, plots loss vs lr
  trainwire export-weights outputs/a -o model.pt
                                                the newest checkpoint's weights as a plain state dict
                                                (single-file or FSDP-sharded), for torch.load + load_state_dict
  torchrun --nproc_per_node=2 -m trainwire train
                                                data-parallel over 2 processes (trainer.strategy=auto: ddp)
"""


class _Launch:
    """Where this process stands in a torchrun launch: its rank, and whether the CLI started the process group."""

    def __init__(self) -> None:
        self.rank, self.world_size, self.started = 0, 1, False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_launch = _Launch()


def _train_task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from trainwire.containers import run
    from trainwire.errors import (
        CheckpointError,
        ConfigError,
        NonFiniteError,
        RunRecordError,
        TrainingInterrupted,
    )
    from trainwire.runtime import logs

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg.run_dir = str(run_dir)
    try:
        cfg = _agreed_config(cfg)
        context = {"rank": _launch.rank} if _launch.distributed else {}
        # Other ranks say only what goes wrong: rank 0 speaks for the run.
        level = cfg["log"]["level"] if _launch.rank == 0 or cfg["log"]["level"] in ("warning", "error") else "warning"
        logs.configure(cfg["log"]["format"], level, run_id=run_dir.name, **context)
        run(cfg)
    except ConfigError as error:
        _say(f"trainwire: error: {error}")
        sys.exit(2)
    except (CheckpointError, NonFiniteError, RunRecordError) as error:
        _signals.leaving()
        _say(f"trainwire: error: {error}")
        sys.exit(1)
    except TrainingInterrupted as interrupted:  # the checkpoint is written: `trainer.resume=auto` continues
        _signals.leaving()
        where = f"checkpoint saved in {run_dir / 'checkpoints'}" if interrupted.saved else "no checkpoint yet"
        _say(f"trainwire: {interrupted}; {where}")
        _leave()  # every rank stopped at the same step (the strategy agreed on it)
        sys.exit(interrupted.exit_code)
    except KeyboardInterrupt:  # a stop signal outside fit (while building, or after training): nothing to save
        _signals.leaving()
        _say(f"trainwire: interrupted by {_signals.name()} outside training; nothing more was saved")
        sys.exit(_signals.exit_code())
    _signals.leaving()
    _leave()


def _say(message: str) -> None:
    if _launch.rank == 0:
        print(message, file=sys.stderr)


def _leave() -> None:
    if _launch.distributed:
        from trainwire.runtime.distributed import shutdown

        shutdown(_launch.started)  # barrier first: gloo may abort at exit without it


def _agreed_config(cfg):
    """The resolved config, validated once: rank 0's, on every rank (with its verdict, so that all exit alike)."""
    from trainwire.config import resolved
    from trainwire.containers import build_container
    from trainwire.errors import ConfigError

    plain = resolved(cfg)
    if plain["trainer"]["strategy"] == "auto":  # the launch decides: data-parallel under torchrun, else one process
        plain["trainer"]["strategy"] = "ddp" if _launch.distributed else "single"
    if not _launch.distributed:
        return plain
    from trainwire.runtime.distributed import broadcast_object

    error = None
    if _launch.rank == 0:
        try:
            if plain["trainer"]["strategy"] == "single":
                raise ConfigError(f"torchrun started {_launch.world_size} processes, but trainer.strategy=single "
                                  "would train one model in each: set trainer.strategy=ddp or fsdp")
            build_container(plain)
        except ConfigError as problem:
            error = str(problem)
    plain, error = broadcast_object((plain, error))
    if error is not None:
        _leave()  # every rank has the verdict, so all reach the barrier; gloo may abort at exit without it
        raise ConfigError(error)
    return plain


def _join_launch(overrides: list[str]) -> list[str]:
    """Under torchrun: joins the process group and makes every rank use rank 0's run directory.

    Hydra would otherwise name a directory per process (from each one's clock) and write its
    ``.hydra`` record from each; ranks other than 0 write no Hydra record or log file.
    """
    from trainwire.runtime.distributed import broadcast_object, init_process_group

    _launch.world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not _launch.distributed:
        return overrides
    if any(arg in ("-m", "--multirun") or arg.startswith("hydra/launcher") for arg in overrides):
        raise _Usage("a sweep (-m) cannot run under torchrun: sweep with a Hydra launcher, each job its own launch")
    _launch.started = init_process_group()
    import torch.distributed as dist

    _launch.rank = dist.get_rank()
    given = [arg.partition("=")[2] for arg in overrides if arg.startswith("hydra.run.dir=")]
    run_dir = broadcast_object(given[-1] if given else time.strftime("outputs/%Y-%m-%d/%H-%M-%S"))
    extra = [] if given else [f"hydra.run.dir={run_dir}"]
    if _launch.rank != 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return [*overrides, *extra]


class _Usage(Exception):
    pass


class _Signals:
    """The CLI's own SIGTERM/SIGINT handlers, in place from the start of ``train`` until the process exits.

    ``fit`` puts its handlers over these while it trains and these back when it returns. Here
    the first signal raises KeyboardInterrupt, so that building or the end of a run stops as
    Ctrl-C would, unless an exception is already being handled (a stop or an error on its way
    out: a second signal must not replace it) or the CLI is leaving; then, and for every later
    signal, it is only noted. So an impatient second SIGTERM still ends in the first one's
    exit code, with its checkpoint, instead of a traceback or death by signal.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._leaving = False

    def install(self) -> None:
        import signal

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def leaving(self) -> None:
        """From here to the exit, a signal changes nothing: ignored, also while the interpreter shuts down."""
        import signal
        import threading

        self._leaving = True
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_IGN)

    def _handle(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        if self._leaving or len(self.received) > 1 or sys.exc_info()[1] is not None:
            return
        raise KeyboardInterrupt(f"signal {signum}")

    def name(self) -> str:
        import signal

        return signal.Signals(self.received[0]).name if self.received else "SIGINT"

    def exit_code(self) -> int:
        import signal

        return 128 + (self.received[0] if self.received else signal.SIGINT)


_signals = _Signals()


def _unwritable(overrides: list[str]) -> str | None:
    """Why the run folder cannot be written (checked before Hydra, whose logging would fail with a traceback)."""
    given = [arg.partition("=")[2] for arg in overrides if arg.startswith("hydra.run.dir=")]
    if any(arg in ("-m", "--multirun", "-c", "--cfg", "-h", "--help", "--hydra-help") for arg in overrides):
        return None  # a sweep's folders are Hydra's to make; printing the config or help writes nothing
    folder = Path(given[-1] if given else "outputs").absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"the run folder {folder} cannot be made: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"the run folder {folder} is not writable ({existing}: read-only, immutable or not permitted)"
    return None


def _train(overrides: list[str]) -> None:
    import hydra

    from trainwire.config import CONFIG_MODULE, check_choices, register_schemas
    from trainwire.errors import CheckpointError, ConfigError

    try:
        overrides = check_choices(overrides)
        composed = _compose_first(overrides)
        overrides = _join_launch(overrides)
        register_schemas(overrides)
    except (ConfigError, _Usage) as error:
        print(f"trainwire: error: {error}", file=sys.stderr)
        sys.exit(2)
    problem = _unwritable(overrides) if _launch.rank == 0 else None
    if problem:
        print(f"trainwire: error: {problem}", file=sys.stderr)
        sys.exit(1)
    try:
        if _launch.rank == 0:
            _claim(overrides, composed)
    except (ConfigError, CheckpointError) as error:
        print(f"trainwire: error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, ConfigError) else 1)
    entry = hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="train")(_train_task)
    # Hydra parses sys.argv itself; hand it only what follows the subcommand.
    sys.argv = ["trainwire-train", *overrides]
    entry()


# Hydra modes that compose otherwise (or not at all); Hydra judges their overrides itself.
_OWN_MODES = ("-m", "--multirun", "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir",
              "--experimental-rerun", "-i", "--info", "--help", "--hydra-help", "--version", "-sc", "--shell-completion")


_claimed: list[object] = []  # the run folder's lock, held by the CLI until the process exits


def _claim(overrides: list[str], composed) -> None:
    """Takes the given run folder (``hydra.run.dir=``) before Hydra writes its ``.hydra/`` record into it (ADR 0023).

    A second process on a live folder, or a fresh run into a folder that holds a run, is refused here,
    so the refused run leaves no trace in the folder. Hydra's default folder is new each second: left to ``run``.
    """
    from trainwire.checkpointing.runfolder import claim

    given = [arg.partition("=")[2] for arg in overrides if arg.startswith("hydra.run.dir=")]
    printing = any(arg in ("-c", "--cfg", "-h", "--help", "--hydra-help") for arg in overrides)  # writes nothing
    if given and composed is not None and not printing:
        from omegaconf import OmegaConf

        _claimed.append(claim(Path(given[-1]).absolute(), composed.trainer.resume, OmegaConf.to_yaml(composed, resolve=True)))


def _compose_first(overrides: list[str]):
    """Composes once before Hydra's run, so that a misspelt key or a wrong type is one ConfigError line; returns it.

    Hydra's own report of the same mistake is several lines and exits 1. Errors this cannot put
    in one line are left to Hydra, which meets them again and reports them its way.
    """
    from trainwire.config import compose
    from trainwire.errors import ConfigError

    if any(arg in _OWN_MODES or arg.startswith(tuple(f"{mode}=" for mode in _OWN_MODES)) for arg in overrides):
        return None
    config = [arg for arg in overrides if "=" in arg and not arg.startswith("-")
              and (not arg.lstrip("+~").startswith(("hydra.", "hydra/")) or "hydra.searchpath" in arg)]
    try:
        return compose(config)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - Hydra reports it on its own run
        return None


def _split_output(args: list[str], default: str) -> tuple[list[str], str]:
    """Takes ``-o PATH`` / ``--output PATH`` out of ``args`` (the rest are run dirs or overrides)."""
    rest, out, index = [], default, 0
    while index < len(args):
        if args[index] in ("-o", "--output"):
            if index + 1 == len(args):
                raise ValueError(f"{args[index]} needs a path")
            out, index = args[index + 1], index + 2
        else:
            rest.append(args[index])
            index += 1
    return rest, out


def _plot(args: list[str]) -> None:
    from trainwire.cli.plots import plot_runs

    run_dirs, out = _split_output(args, "")
    if not run_dirs:
        raise ValueError("plot needs at least one run directory")
    written = plot_runs(run_dirs, out or Path(run_dirs[0]) / "curves.png")
    print(out or Path(run_dirs[0]) / "curves.png", f"({len(written)} run{'s' if len(written) > 1 else ''})")


def _compare(args: list[str]) -> None:
    from trainwire.cli.compare import main as compare

    print(compare(args), end="")


def _lr_preview(args: list[str]) -> None:
    from trainwire.cli.plots import plot_lr
    from trainwire.config import compose
    from trainwire.containers import lr_preview

    overrides, out = _split_output(args, "lr.png")
    cfg = compose(overrides)
    lrs, per_epoch = lr_preview(cfg)
    plot_lr(lrs, out, steps_per_epoch=per_epoch,
            title=f"lr={cfg.lr.get('type', 'custom')}, optimizer.lr={cfg.optimizer.get('lr')}, "
                  f"{len(lrs)} steps over {cfg.trainer.max_epochs} epochs")
    print(out, f"(lr from {lrs[0]:.3g} to {lrs[-1]:.3g}, peak {max(lrs):.3g})")


def _take_option(args: list[str], name: str, default: str) -> tuple[list[str], str]:
    """Takes ``name VALUE`` (or ``name=VALUE``) out of ``args``."""
    rest, value, index = [], default, 0
    while index < len(args):
        if args[index] == name:
            if index + 1 == len(args):
                raise ValueError(f"{name} needs a value")
            value, index = args[index + 1], index + 2
        elif args[index].startswith(f"{name}="):
            value, index = args[index].partition("=")[2], index + 1
        else:
            rest.append(args[index])
            index += 1
    return rest, value


def _lr_find(args: list[str]) -> None:
    from trainwire.cli.lr_find import lr_find
    from trainwire.cli.plots import plot_lr_find
    from trainwire.config import compose
    from trainwire.runtime import logs

    overrides, out = _split_output(args, "lr_find.png")
    overrides, steps = _take_option(overrides, "--steps", "100")
    overrides, start = _take_option(overrides, "--start-lr", "1e-7")
    overrides, end = _take_option(overrides, "--end-lr", "10")
    try:
        steps_n, start_lr, end_lr = int(steps), float(start), float(end)
    except ValueError:
        raise ValueError(f"lr-find --steps={steps!r} --start-lr={start!r} --end-lr={end!r}: "
                         "an integer and two numbers") from None
    cfg = compose(overrides)
    logs.configure(cfg.log.format, "warning")  # the range test's epochs are not news
    result = lr_find(cfg, steps=steps_n, start_lr=start_lr, end_lr=end_lr)
    if not result.is_rank0:  # under torchrun every process tested; rank 0 speaks and writes
        return
    plot_lr_find(result.lrs, result.losses, result.smoothed, result.suggestion, out,
                 title=f"LR range test: {len(result.lrs)} steps ({result.reason}), "
                       f"optimizer={cfg.optimizer.get('type', 'custom')}, objective={cfg.objective.get('type', 'custom')}")
    print(f"suggested optimizer.lr={result.suggestion:.3g} ({len(result.lrs)} steps, {result.reason}; plot: {out})")


def _see_working_directory() -> None:
    """Puts the working directory first on ``sys.path``, as ``python -m trainwire`` does.

    The console script's ``sys.path`` starts with its own folder instead, so a user's
    ``model._target_=mylab.SmallCNN`` next to them would not import.
    """
    cwd = os.getcwd()
    if not any(entry in ("", ".") or os.path.abspath(entry) == cwd for entry in sys.path):
        sys.path.insert(0, cwd)


def _export_weights(args: list[str]) -> None:
    from trainwire.checkpointing.export import export_weights
    from trainwire.errors import CheckpointError

    sources, out = _split_output(args, "model.pt")
    if len(sources) != 1:
        raise ValueError("export-weights needs one run folder or checkpoint file")
    try:
        source, weights = export_weights(sources[0], out)
    except CheckpointError as error:
        print(f"trainwire: error: {error}", file=sys.stderr)
        sys.exit(1)
    print(out, f"({len(weights)} tensors from {source})")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    _see_working_directory()
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command == "train":
        _signals.install()  # before the slow imports: a SIGTERM from here on ends in one line, not a traceback
        try:
            _train(rest)
        except KeyboardInterrupt:  # before Hydra ran the task
            _signals.leaving()
            print(f"trainwire: interrupted by {_signals.name()} before training; nothing was saved", file=sys.stderr)
            sys.exit(_signals.exit_code())
        finally:
            _signals.leaving()
        return
    tools = {"plot": _plot, "lr-preview": _lr_preview, "lr-find": _lr_find, "compare": _compare,
             "export-weights": _export_weights}
    if command not in tools:
        print(f"trainwire: error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    from trainwire.errors import ConfigError

    try:
        tools[command](rest)
    except (ConfigError, ValueError) as error:
        print(f"trainwire: error: {error}", file=sys.stderr)
        sys.exit(2)
    except ImportError as error:
        print(f"trainwire: error: {command} needs {error.name or 'matplotlib'}, which is not installed "
              "(pip install 'trainwire[plot]')", file=sys.stderr)
        sys.exit(2)
