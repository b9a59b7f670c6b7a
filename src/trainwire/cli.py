"""``trainwire`` on the command line: ``trainwire train [overrides…]``.

The Hydra entry point only builds the container and calls ``trainwire.containers.run``;
everything it does can be done from Python the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = """usage: trainwire train [hydra overrides ...]

  trainwire train                               train the default job (MLP on the bundled digits)
  trainwire train lr=constant optimizer.lr=0.01 override any key of the config
  trainwire train --cfg job                     print the composed config
  trainwire train -m optimizer.lr=1e-3,3e-3     a Hydra sweep
"""


def _train_task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from trainwire import logs
    from trainwire.containers import run
    from trainwire.errors import CheckpointError, ConfigError, NonFiniteError, TrainingInterrupted

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg.run_dir = str(run_dir)
    try:
        logs.configure(cfg.log.format, cfg.log.level, run_id=run_dir.name)
        run(cfg)
    except ConfigError as error:
        print(f"trainwire: error: {error}", file=sys.stderr)
        sys.exit(2)
    except (CheckpointError, NonFiniteError) as error:
        print(f"trainwire: error: {error}", file=sys.stderr)
        sys.exit(1)
    except TrainingInterrupted as interrupted:  # the checkpoint is written: `trainer.resume=auto` continues
        print(f"trainwire: {interrupted}; checkpoint saved in {run_dir / 'checkpoints'}", file=sys.stderr)
        sys.exit(interrupted.exit_code)


def _train(overrides: list[str]) -> None:
    import hydra

    from trainwire.config import CONFIG_MODULE, check_choices, register_schemas
    from trainwire.errors import ConfigError

    try:
        overrides = check_choices(overrides)
    except ConfigError as error:
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
