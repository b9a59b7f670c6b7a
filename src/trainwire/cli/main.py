"""``trainwire`` on the command line: ``trainwire train [overrides…]`` and the tools around a run.

``train`` is ``trainwire.cli.train``: it composes once, builds the container once and calls
``trainwire.containers.run``, as a Python caller does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

USAGE = """usage: trainwire train [hydra overrides ...]
       trainwire plot RUN_DIR|SWEEP_DIR [RUN_DIR ...] [-o curves.png]
       trainwire compare SWEEP_DIR | RUN_DIR [RUN_DIR ...] [--csv]
       trainwire lr-preview [hydra overrides ...] [-o lr.png]
       trainwire lr-find [hydra overrides ...] [--steps 100] [--start-lr 1e-7] [--end-lr 10] [-o lr_find.png]
       trainwire export-weights RUN_DIR|CHECKPOINT [-o model.pt] [--format torch|safetensors]
       trainwire evaluate RUN_DIR|CHECKPOINT [key=value ...] [--json]

  trainwire train                               train the default job (MLP on the bundled digits)
  trainwire train lr=constant optimizer.lr=0.01 override any key of the config
  trainwire train sink=[wandb,tensorboard]      several sinks at once (sink.wandb.mode=offline, ...)
  trainwire train --cfg job                     print the composed config
  trainwire train -m optimizer.lr=1e-3,3e-3     a Hydra sweep
  trainwire plot outputs/a outputs/b -o ab.png  loss, monitored metric, lr and grad norm of runs, as PNG
  trainwire compare multirun/2026-11-30/12-00-00
                                                each run of a sweep: its overrides vs its status, best value,
                                                other val/ metrics and stop reason (trainwire plot takes it too)
  trainwire lr-preview lr.warmup_epochs=5       the lr curve a config would produce, without training
  trainwire lr-find data=diabetes objective=regression
                                                LR range test: suggests an optimizer.lr, plots loss vs lr
  trainwire export-weights outputs/a -o model.pt
                                                the run's best weights (best.pt; else its newest checkpoint) as a
                                                plain state dict (single-file or FSDP-sharded), for torch.load +
                                                load_state_dict; --format safetensors (or -o *.safetensors) for
                                                safetensors.torch.load_file (pip install safetensors)
  trainwire evaluate outputs/a data.batch_size=256
                                                the run's best weights scored with its objective on its test
                                                split (else its validation split): a table, or --json
  torchrun --nproc_per_node=2 -m trainwire train
                                                data-parallel over 2 processes (strategy=auto: ddp)

  trainwire COMMAND --help                      a command's usage (train: every config group's options)
"""


COMMANDS = ("train", "plot", "compare", "lr-preview", "lr-find", "export-weights", "evaluate")


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
        raise ValueError("plot needs at least one run directory or sweep folder")
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
    from trainwire import logs
    from trainwire.cli.lr_find import lr_find
    from trainwire.cli.plots import plot_lr_find
    from trainwire.config import compose

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

    sources, out = _split_output(args, "")
    sources, fmt = _take_option(sources, "--format", "")
    if len(sources) != 1:
        raise ValueError("export-weights needs one run folder or checkpoint file")
    fmt = fmt or ("safetensors" if out.endswith(".safetensors") else "torch")  # -o model.safetensors says it
    out = out or ("model.safetensors" if fmt == "safetensors" else "model.pt")
    try:
        source, weights = export_weights(sources[0], out, format=fmt)
    except CheckpointError as error:
        print(f"trainwire: error: {error}", file=sys.stderr)
        sys.exit(1)
    which = "" if not Path(sources[0]).is_dir() else (
        ": the run's best weights" if source.name == "best.pt" else ": its newest checkpoint, as the run kept no best.pt")
    print(out, f"({len(weights)} tensors, {fmt}, from {source}{which})")


def _evaluate(args: list[str]) -> None:
    from trainwire import logs
    from trainwire.cli.evaluate import main as evaluate

    logs.configure("auto", "warning")  # building the run again is not news; its warnings are
    print(evaluate(args), end="")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    _see_working_directory()
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command in COMMANDS and any(arg in ("-h", "--help") for arg in rest):
        from trainwire.cli.help import command_help

        print(command_help(command), end="")
        sys.exit(0)
    if command == "train":
        from trainwire.cli.train import train

        train(rest)
        return
    tools = {"plot": _plot, "lr-preview": _lr_preview, "lr-find": _lr_find, "compare": _compare,
             "export-weights": _export_weights, "evaluate": _evaluate}
    if command not in COMMANDS:
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
    except OSError as error:  # writing its output (-o) failed: a folder that is not there, no room, no permission
        print(f"trainwire: error: {command} cannot write {error.filename or 'its output'}: "
              f"{error.strerror or error}", file=sys.stderr)
        sys.exit(1)
