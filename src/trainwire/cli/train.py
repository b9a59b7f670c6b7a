"""``trainwire train``: one path from the command line to the loop (ADR 0027).

The arguments are parsed once (``check_choices``), the config is composed once (rank 0, with
Hydra's node), resolved once and handed to every rank under torchrun; every rank builds the
container once from that resolved config; ``trainwire.containers.run`` claims the run folder
once and trains. Hydra's ``.hydra/`` record is written by ``HydraRecord`` when training starts,
so a refused run (a bad value, a live or used folder, a changed config, damaged checkpoints)
leaves the run folder as it found it.

A sweep (``-m``) and the modes that print or explain (``--cfg``, ``--hydra-help``, ``--info``, ...)
are Hydra's own: ``@hydra.main`` composes each job, and each job then takes the same path
(``_fit``) from its composed config on, with Hydra's record deferred the same way. ``--help`` is
the CLI's own (``trainwire.cli.help``), answered before this module is imported.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

# Modes Hydra runs itself: a sweep, printing the config, help, another config folder or name, completion.
HYDRA_MODES = ("-m", "--multirun", "-c", "--cfg", "-p", "--package", "--resolve", "-cp", "--config-path", "-cn",
               "--config-name", "-cd", "--config-dir", "--experimental-rerun", "-i", "--info", "-h", "--help",
               "--hydra-help", "--version", "-sc", "--shell-completion")
JOB_NAME = "main"  # Hydra's job name, as @hydra.main gave it from this entry point's module: main.log


class Launch:
    """Where this process stands in a torchrun launch: its rank, and whether the CLI started the process group."""

    def __init__(self) -> None:
        self.rank, self.world_size, self.started = 0, 1, False
        self.said = ""  # the last line said: a failed trial of a search records it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def join(self, args: list[str]) -> None:
        """Under torchrun: joins the process group (a sweep cannot run there: one launch is one job)."""
        from trainwire.runtime.distributed import init_process_group

        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if not self.distributed:
            return
        if any(arg in ("-m", "--multirun") or arg.startswith("hydra/launcher") for arg in args):
            raise Usage("a sweep (-m) cannot run under torchrun: sweep with a Hydra launcher, each job its own launch")
        self.started = init_process_group()
        import torch.distributed as dist

        self.rank = dist.get_rank()

    def say(self, message: str) -> None:
        self.said = message
        if self.rank == 0:
            print(message, file=sys.stderr)

    def leave(self) -> None:
        if self.distributed:
            from trainwire.runtime.distributed import shutdown

            shutdown(self.started)  # barrier first: gloo may abort at exit without it


class Usage(Exception):
    pass


class Refused(Exception):
    """A refusal found before the config reaches the container, with the exit code it carries."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Signals:
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

    def _handle(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        if self._leaving or len(self.received) > 1 or sys.exc_info()[1] is not None:
            return
        if _importing(frame):
            # An exception raised here may cross a C++ extension's module init (torch's pybind11
            # callbacks), which aborts the process ("terminate called ..."). An import writes
            # nothing of the run, so leaving at once loses nothing.
            sys.stderr.write(f"trainwire: interrupted by {self.name()} before training; nothing was saved\n")
            sys.stderr.flush()
            os._exit(self.exit_code())
        raise KeyboardInterrupt(f"signal {signum}")

    def check(self) -> None:
        """Raises KeyboardInterrupt for a signal that came while an exception was being handled (only noted
        then: inside an import's ``except``, say), so that it still stops the run before training starts."""
        if self.received and not self._leaving:
            raise KeyboardInterrupt(f"signal {self.received[0]}")

    def name(self) -> str:
        import signal

        return signal.Signals(self.received[0]).name if self.received else "SIGINT"

    def exit_code(self) -> int:
        import signal

        return 128 + (self.received[0] if self.received else signal.SIGINT)


def _importing(frame: Any) -> bool:
    """Whether ``frame`` runs inside a module import (importlib's frames are on its stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


launch = Launch()
signals = Signals()


class HydraRecord:
    """Hydra's record of a run (``<output_subdir>/config.yaml``, ``hydra.yaml``, ``overrides.yaml``), as a hook.

    Hydra writes these before its task runs; here they are written at ``on_train_start``, after
    the resume has been settled and the run record started, each file atomically, once. Rank 0's.
    """

    def __init__(self, folder: Path, files: dict[str, str]) -> None:
        self.folder, self.files, self.written = folder, files, False

    @classmethod
    def of(cls, task: Any, hydra: Any, output_subdir: str | None) -> HydraRecord | None:
        """The record of a job's ``task`` config and ``hydra`` node (output_dir set), as Hydra writes it; None: none asked."""
        from omegaconf import OmegaConf

        if output_subdir is None:
            return None
        node = OmegaConf.create({"hydra": OmegaConf.to_container(hydra)})
        node.hydra.output_subdir = output_subdir  # the record says where it is, also when Hydra was told null
        files = {"config.yaml": OmegaConf.to_yaml(task), "hydra.yaml": OmegaConf.to_yaml(node),
                 "overrides.yaml": OmegaConf.to_yaml(hydra.overrides.task)}
        return cls(Path(hydra.runtime.output_dir) / output_subdir, files)

    def on_train_start(self, state: Any) -> None:
        from trainwire.sinks.jsonl import write_atomic

        if self.written:  # a staged paradigm starts training more than once
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            write_atomic(self.folder / name, text)
        self.written = True


def _unwritable(folder: Path) -> tuple[str, int] | None:
    """Why the run folder cannot hold a run, and the exit code; said before anything is built or written.

    The deepest folder that exists is asked by writing a small file there and removing it: a
    pseudo-filesystem (``/proc``), a read-only mount, a full disk or a quota say no only when
    tried, and the run would otherwise fail at its first record (or inside Hydra). A run folder
    that exists already (a resume) is not written to, as a refused resume must leave it as it
    was, its mtime included: there the file system's free space is asked instead. A path that
    cannot be a folder is the user's input (2); a folder that cannot be written now is 1.
    """
    import errno
    import tempfile

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"the run folder {folder} cannot be made: {existing} is not a folder", 2
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"the run folder {folder} is not writable ({existing}: read-only, immutable or not permitted)", 1
    if existing == folder:
        space = os.statvfs(folder)
        if space.f_bavail == 0 or (space.f_files and space.f_favail == 0):
            return f"the run folder {folder} cannot be written: its file system is full", 1
        return None
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".trainwire-probe-")
        try:
            os.write(handle, b"probe\n")
            os.fsync(handle)
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"the run folder {folder} cannot be written: {existing} is full ({reason})", 1
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"the run folder {folder} is not writable ({existing}: {reason})", 1
        return f"the run folder {folder} cannot be made in {existing}: {reason}", 2
    return None


def _composed(overrides: list[str]) -> Any:
    """The config with its ``hydra`` node, composed once (one ConfigError line for a mistake Hydra reports in many)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    from trainwire.config import _COMPOSE_LOCK, CONFIG_MODULE, explain, register_schemas
    from trainwire.errors import ConfigError

    with _COMPOSE_LOCK:
        register_schemas(overrides)
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3", job_name=JOB_NAME):
            try:
                return compose(config_name="train", overrides=overrides, return_hydra_config=True)
            except HydraException as error:
                explained = explain(error)
                if explained is not None:
                    raise explained from error
                raise ConfigError("; ".join(line.strip() for line in str(error).splitlines() if line.strip())) from None


def _check_resume_path(resume: str | None) -> None:
    """A ``trainer.resume`` path that is not there is refused before the run folder is made."""
    from trainwire.checkpointing.format import CHECKPOINT_NAME
    from trainwire.errors import ConfigError

    if resume is None or resume == "auto" or CHECKPOINT_NAME.match(resume):  # a name: the run's own store's
        return
    if not Path(resume).exists():
        raise ConfigError(f"trainer.resume={resume!r}: no such checkpoint file or run folder (trainer.resume=auto "
                          "continues the run in hydra.run.dir)")


def _prepared(args: list[str]) -> tuple[dict[str, Any], HydraRecord | None]:
    """Rank 0's part: check the overrides, compose, resolve; set up Hydra's config and logging for the task.

    Returns the resolved config (``run_dir`` set to Hydra's run folder, ``trainer.strategy=auto``
    decided by the launch) and the Hydra record to write when training starts. Nothing is written.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import configure_log
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict, read_write

    from trainwire.config import check_booleans, check_choices, check_overrides, resolved
    from trainwire.errors import ConfigError

    parsed = check_overrides(args)
    overrides = check_choices(args)
    check_sweeper(overrides)
    if launch.distributed:  # every rank uses rank 0's folder; the default is named from rank 0's clock alone
        overrides = [*overrides, *([] if any(o.startswith("hydra.run.dir=") for o in overrides)
                                   else [f"hydra.run.dir=outputs/{time.strftime('%Y-%m-%d/%H-%M-%S')}"])]
    config = _composed(overrides)
    run_dir = Path(str(config.hydra.run.dir)).absolute()
    problem = _unwritable(run_dir)
    if problem:
        raise Refused(*problem)
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.runtime.output_dir = str(run_dir)
        config.hydra.mode = RunMode.RUN
        if config.hydra.job_logging is not None and "file" in config.hydra.job_logging.get("handlers", {}):
            config.hydra.job_logging.handlers.file.delay = True  # the log file appears with its first record
    HydraConfig.instance().set_config(config)  # ${hydra:...} resolves, and user code may ask, as under @hydra.main
    task = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
    record = HydraRecord.of(task, config.hydra, config.hydra.output_subdir)
    plain = resolved(task)
    check_booleans(plain, parsed)
    plain["run_dir"] = str(run_dir)
    _check_resume_path(plain["trainer"].get("resume"))
    _decide_strategy(plain)
    if config.hydra.job.chdir:
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chdir(run_dir)
    os.environ.update({str(key): str(value) for key, value in (config.hydra.job.env_set or {}).items()})
    configure_log(config.hydra.job_logging, config.hydra.verbose)
    if launch.distributed and plain["strategy"].get("type") == "single":
        raise ConfigError(f"torchrun started {launch.world_size} processes, but strategy=single "
                          "would train one model in each: set strategy=ddp or fsdp")
    return plain, record


def logs_to_stderr() -> None:
    """Points the console handlers Hydra gave the root logger (``job_logging``: stdout) at stderr.

    The CLI's stdout is for data (``--cfg job``, ``compare``, ``evaluate --json``); a user's own
    ``logging.getLogger(__name__).info(...)`` in a model or data target is a log line like ours.
    """
    import logging

    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def _decide_strategy(plain: dict[str, Any]) -> None:
    if plain["strategy"].get("type") == "auto":  # the launch decides: data-parallel under torchrun, else one process
        plain["strategy"]["type"] = "ddp" if launch.distributed else "single"


def _agreed(args: list[str]) -> tuple[dict[str, Any], HydraRecord | None]:
    """Rank 0's resolved config on every rank, or rank 0's refusal on every rank (so that all exit alike)."""
    plain = record = refusal = None
    if launch.rank == 0:
        from trainwire.errors import ConfigError

        try:
            plain, record = _prepared(args)
        except ConfigError as error:
            refusal = (str(error), 2)
        except Refused as error:
            refusal = (str(error), error.code)
    if launch.distributed:
        from trainwire.runtime.distributed import broadcast_object

        plain, refusal = broadcast_object((plain, refusal))
    if refusal is not None:
        launch.leave()  # every rank has the verdict, so all reach the barrier
        raise Refused(*refusal)
    return plain, record


def _built(plain: dict[str, Any]) -> Any:
    """The container, built once on every rank from the same resolved config; a refusal on any rank ends every rank."""
    from trainwire.containers import build_container
    from trainwire.errors import ConfigError

    try:
        container, error = build_container(plain), None
    except ConfigError as problem:
        container, error = None, problem
    if launch.distributed:
        import torch
        import torch.distributed as dist

        failed = torch.zeros(launch.world_size, dtype=torch.int64)
        failed[launch.rank] = error is not None
        dist.all_reduce(failed)  # a CPU tensor: the default group speaks gloo
        if failed.any():
            if error is not None and not failed[0]:  # rank 0 speaks for the run; here it had nothing to say
                print(f"trainwire: error: {error} (rank {launch.rank})", file=sys.stderr)
            launch.leave()
            raise error if error is not None else Refused("", 2)
    elif error is not None:
        raise error
    return container


def _fit(plain: dict[str, Any], record: HydraRecord | None) -> None:
    """From a resolved config to the loop, for a run and for each job of a sweep; every refusal is one line."""
    from dependency_injector import providers

    from trainwire import logs
    from trainwire.containers import run
    from trainwire.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        NonFiniteError,
        RunRecordError,
        TrainingInterrupted,
    )

    run_dir = Path(plain["run_dir"])
    try:
        container = _built(plain)
        context = {"rank": launch.rank} if launch.distributed else {}
        # Other ranks say only what goes wrong: rank 0 speaks for the run.
        level = plain["log"]["level"] if launch.rank == 0 or plain["log"]["level"] in ("warning", "error") else "warning"
        logs.configure(plain["log"]["format"], level, first=plain["stopping"].get("monitor") or "val/loss",
                       run_id=run_dir.name, **context)
        logs_to_stderr()
        if record is not None:
            container.hooks.override(providers.Object([*container.hooks(), record]))
        signals.check()
        run(container)
    except Refused as refused:
        if str(refused):
            launch.say(f"trainwire: error: {refused}")
        sys.exit(refused.code)
    except ConfigError as error:
        launch.say(f"trainwire: error: {error}")
        sys.exit(2)
    except (CheckpointError, NonFiniteError, RunRecordError) as error:
        signals.leaving()
        launch.say(f"trainwire: error: {error}")
        sys.exit(1)
    except DataError as error:  # 2: data refused before the first step; 1: reading them failed while running
        signals.leaving()
        launch.say(f"trainwire: error: {error}")
        sys.exit(error.exit_code)
    except TrainingInterrupted as interrupted:  # the checkpoint is written: `trainer.resume=auto` continues
        signals.leaving()
        where = f"checkpoint saved in {run_dir / 'checkpoints'}" if interrupted.saved else "no checkpoint yet"
        launch.say(f"trainwire: {interrupted}; {where}")
        launch.leave()  # every rank stopped at the same step (the strategy agreed on it)
        sys.exit(interrupted.exit_code)
    except KeyboardInterrupt:  # a stop signal outside fit (while building, or after training): nothing to save
        signals.leaving()
        launch.say(f"trainwire: interrupted by {signals.name()} outside training; nothing more was saved")
        sys.exit(signals.exit_code())
    signals.leaving()
    launch.leave()


class TrialFailed(Exception):
    """A search's trial that was refused or failed: its sweeper records it as failed and the study goes on."""


def _sweep_job(cfg: Any) -> float | None:
    """Hydra's task for each job of a sweep (and its other modes): the job's config takes the same path on.

    Returns the run's monitored best value (``best_value`` in its ``summary.json``), which a
    search sweeper optimises (ADR 0029). Under such a sweeper a refused or failed trial raises
    ``TrialFailed`` instead of ending the process, so the study records it and goes on; a stop
    signal still ends the study, with its checkpoint, as it ends a run.
    """
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir)
    searching = not str(hydra.sweeper.get("_target_", "")).endswith("BasicSweeper")
    try:
        _sweep_fit(cfg, hydra, run_dir)
    except SystemExit as exit_:
        if not searching or exit_.code not in (1, 2):
            raise
        _record_failure(run_dir, launch.said, HydraRecord.of(cfg, hydra, _SWEEP_SUBDIR[0]))
        raise TrialFailed(launch.said) from None
    value = _best_value(run_dir)
    if searching and value is None:  # the sweeper would say only "Return value must be float-castable"
        launch.say("trainwire: error: the trial's run kept no monitored best value for the search to optimise "
                   "(stopping=none, or no validation data): set stopping.monitor")
        raise TrialFailed(launch.said)
    return value


def _sweep_fit(cfg: Any, hydra: Any, run_dir: Path) -> None:
    from trainwire.config import check_booleans, check_overrides, resolved
    from trainwire.errors import ConfigError

    try:
        plain = resolved(cfg)
        check_booleans(plain, check_overrides(list(hydra.overrides.task), sweep=True))
    except ConfigError as error:
        launch.say(f"trainwire: error: {error}")
        sys.exit(2)
    plain["run_dir"] = str(run_dir)
    _decide_strategy(plain)
    _fit(plain, HydraRecord.of(cfg, hydra, _SWEEP_SUBDIR[0]))


def _best_value(run_dir: Path) -> float | None:
    """The monitored best value of the run in ``run_dir``; None where its summary has none (a run with no validation)."""
    import json

    try:
        value = json.loads((run_dir / "summary.json").read_text()).get("best_value")
    except (OSError, ValueError):
        return None
    return None if value is None else float(value)


def _record_failure(run_dir: Path, line: str, record: HydraRecord | None) -> None:
    """A refused trial's verdict in its folder's ``summary.json``, in the shape of a failed run's (ADR 0032).

    A trial whose run started has its summary from the run itself (``Trainer.fit`` writes
    ``status: failed`` however it ends); only a trial refused before its record started (a bad
    value, which writes nothing in a run of its own) gets one here, built by the same ``FitResult``,
    with Hydra's record of what the trial tried (its overrides), so that its folder says both.
    """
    from trainwire.errors import RunRecordError
    from trainwire.loop.trainer import FitResult
    from trainwire.sinks.jsonl import JsonlSink

    if (run_dir / "summary.json").exists():
        return
    verdict = FitResult(epochs_completed=0, best_epoch=None, best_value=None, monitor=None, stop_reason="refused",
                        status="failed", error=line.removeprefix("trainwire: error: "))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if record is not None:
            record.on_train_start(None)
        JsonlSink(run_dir).summary(verdict.summary())
    except (OSError, RunRecordError):  # an unwritable trial folder: the study's log still says why
        pass


_SWEEP_SUBDIR: list[str | None] = [".hydra"]  # where each sweep job's record goes (hydra.output_subdir, as given)


def check_sweeper(overrides: list[str]) -> None:
    """One line, before Hydra's many, where ``hpo=optuna`` or ``hydra/sweeper=optuna`` is asked without the plugin."""
    import importlib.util

    from trainwire.errors import ConfigError

    unquoted = [o.lstrip("+").replace("'", "").replace('"', "") for o in overrides]
    asked = [o for o in unquoted if o in ("hpo=optuna", "hydra/sweeper=optuna")]
    if not asked:
        return

    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except ModuleNotFoundError:  # hydra_plugins itself: no Hydra plugin installed at all
            return True

    missing = [name for name in ("optuna", "hydra_plugins.hydra_optuna_sweeper") if absent(name)]
    if missing:
        raise ConfigError(f"{asked[0]} needs Hydra's Optuna sweeper ({', '.join(missing)} not installed): "
                          "pip install 'trainwire[tune]' && pip install --no-deps hydra-optuna-sweeper==1.3.0")


def _hydra_main(args: list[str]) -> None:
    """Hands a sweep or a printing mode to ``@hydra.main``; each job's Hydra record is deferred to ``_fit``."""
    import hydra

    from trainwire.config import CONFIG_MODULE, check_choices, check_overrides, register_schemas

    check_overrides([arg for arg in args if "=" in arg and not arg.startswith("-")], sweep=True)
    overrides = check_choices(args)
    check_sweeper(overrides)
    register_schemas(overrides)
    given = [arg.partition("=")[2] for arg in overrides if arg.startswith("hydra.output_subdir=")]
    if given:
        _SWEEP_SUBDIR[0] = None if given[-1] in ("null", "None", "~") else given[-1]
    ours = ["hydra.output_subdir=null", *([] if any(arg.startswith("hydra.job.name=") for arg in overrides)
                                          else [f"hydra.job.name={JOB_NAME}"])]
    if not any(arg.startswith(("hydra/hydra_logging=", "hydra.hydra_logging")) for arg in overrides):
        # Hydra's own lines of a sweep ("Launching 4 jobs locally"): stdout is for data (ADR 0035). Its
        # launcher configures this logging itself as it starts, so the config is the place to say so.
        ours.append("hydra.hydra_logging.handlers.console.stream=ext://sys.stderr")
    overrides = [arg for arg in overrides if not arg.startswith("hydra.output_subdir=")]
    # Ours join the user's overrides where they begin: argparse takes the overrides as one run of words,
    # so between or after the flags (``-m``, ``--cfg job``) they would be refused.
    at = next((i for i, arg in enumerate(overrides) if "=" in arg and not arg.startswith("-")), len(overrides))
    overrides[at:at] = ours
    entry = hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="train")(_sweep_job)
    sys.argv = [JOB_NAME, *overrides]  # Hydra parses sys.argv itself; hand it only what follows the subcommand
    try:
        entry()
    except ValueError as error:  # Hydra's own check of its modes, before anything runs (-m with --cfg, say)
        if not str(error).startswith("Only one of --run, --multirun"):
            raise
        raise Usage(str(error)) from None


def train(args: list[str]) -> None:
    """``trainwire train [overrides ...]``: exits 0, or with one line and the code of the first refusal."""
    try:
        _train(args)
    finally:
        if launch.distributed:
            _exit_now()


def _exit_now() -> None:
    """Ends a torchrun worker with its exit code, skipping the interpreter's teardown.

    Every rank has passed the last barrier and the run's files are closed by now; what is left is
    teardown, and there gloo's threads can outlive their owners and abort the process
    ("terminate called without an active exception", exit -6) after a run that succeeded.
    """
    import traceback

    problem = sys.exc_info()[1]
    if problem is None:
        code = 0
    elif isinstance(problem, SystemExit):
        code = problem.code if isinstance(problem.code, int) else (0 if problem.code is None else 1)
        if isinstance(problem.code, str):
            print(problem.code, file=sys.stderr)
    else:
        traceback.print_exc()
        code = 1
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _train(args: list[str]) -> None:
    from trainwire.errors import ConfigError

    signals.install()  # before the slow imports: a SIGTERM from here on ends in one line, not a traceback
    try:
        try:
            launch.join(args)
            if any(arg in HYDRA_MODES or arg.startswith(tuple(f"{mode}=" for mode in HYDRA_MODES)) for arg in args):
                _hydra_main(args)
                return
            plain, record = _agreed(args)
        except (ConfigError, Usage) as error:
            launch.say(f"trainwire: error: {error}")
            sys.exit(2)
        except Refused as refused:
            launch.say(f"trainwire: error: {refused}")
            sys.exit(refused.code)
        _fit(plain, record)
    except KeyboardInterrupt:  # before training started
        signals.leaving()
        print(f"trainwire: interrupted by {signals.name()} before training; nothing was saved", file=sys.stderr)
        sys.exit(signals.exit_code())
    finally:
        signals.leaving()
