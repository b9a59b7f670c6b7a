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

  trainwire train                               train the default job (MLP on the bundled digits)
  trainwire train lr=constant optimizer.lr=0.01 override any key of the config
  trainwire train --cfg job                     print the composed config
  trainwire train -m optimizer.lr=1e-3,3e-3     a Hydra sweep
  torchrun --nproc_per_node=2 -m trainwire train trainer.strategy=ddp
                                                data-parallel over 2 processes
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

    from trainwire import logs
    from trainwire.containers import run
    from trainwire.errors import CheckpointError, ConfigError, NonFiniteError, TrainingInterrupted

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
    except (CheckpointError, NonFiniteError) as error:
        _say(f"trainwire: error: {error}")
        sys.exit(1)
    except TrainingInterrupted as interrupted:  # the checkpoint is written: `trainer.resume=auto` continues
        _say(f"trainwire: {interrupted}; checkpoint saved in {run_dir / 'checkpoints'}")
        _leave()  # every rank stopped at the same step (the strategy agreed on it)
        sys.exit(interrupted.exit_code)
    _leave()


def _say(message: str) -> None:
    if _launch.rank == 0:
        print(message, file=sys.stderr)


def _leave() -> None:
    if _launch.distributed:
        from trainwire.distributed import shutdown

        shutdown(_launch.started)  # barrier first: gloo may abort at exit without it


def _agreed_config(cfg):
    """The resolved config, validated once: rank 0's, on every rank (with its verdict, so that all exit alike)."""
    from omegaconf import OmegaConf

    from trainwire.containers import build_container
    from trainwire.errors import ConfigError

    plain = OmegaConf.to_container(cfg, resolve=True)
    if not _launch.distributed:
        return plain
    from trainwire.distributed import broadcast_object

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
        raise ConfigError(error)
    return plain


def _join_launch(overrides: list[str]) -> list[str]:
    """Under torchrun: joins the process group and makes every rank use rank 0's run directory.

    Hydra would otherwise name a directory per process (from each one's clock) and write its
    ``.hydra`` record from each; ranks other than 0 write no Hydra record or log file.
    """
    from trainwire.distributed import broadcast_object, init_process_group

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


def _train(overrides: list[str]) -> None:
    import hydra

    from trainwire.config import CONFIG_MODULE, check_choices, register_schemas
    from trainwire.errors import ConfigError

    try:
        overrides = _join_launch(check_choices(overrides))
    except (ConfigError, _Usage) as error:
        print(f"trainwire: error: {error}", file=sys.stderr)
        sys.exit(2)
    register_schemas()
    entry = hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="train")(_train_task)
    # Hydra parses sys.argv itself; hand it only what follows the subcommand.
    sys.argv = ["trainwire-train", *overrides]
    entry()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command != "train":
        print(f"trainwire: error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    _train(rest)
