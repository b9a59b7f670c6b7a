"""``trainwire <command> --help``: each command's usage, and for ``train`` every config group's options.

The groups' options come from the registry (built in, and the entry points of installed packages,
read but not imported) and the YAML files packaged with trainwire, so ``train --help`` imports
neither torch nor Hydra: it answers at once.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

HELP = {
    "plot": """usage: trainwire plot RUN_DIR|SWEEP_DIR [RUN_DIR ...] [-o curves.png]

Draws runs from their metrics.jsonl into one PNG: training and validation loss, the monitored
metric, the lr and the gradient norm by optimizer step, one colour per run, each run's best
epoch (star) and stop (cross) marked on its own curve. A sweep folder (multirun/<date>/<time>)
stands for the runs in it. Default output: curves.png in the first folder given.
""",
    "compare": """usage: trainwire compare SWEEP_DIR | RUN_DIR [RUN_DIR ...] [--csv]

Tables runs side by side: the overrides that differ between them, each run's status, its best
monitored value, the other val/ metrics of its summary, its stop reason and epochs; finished
runs best first. A sweep folder (multirun/<date>/<time>) stands for the runs in it; a run
without summary.json is listed as incomplete. A search's sweep folder (Hydra's Optuna sweeper,
hpo=optuna) is read as a study: trials in study order, each with its number and Optuna state
(COMPLETE, FAIL, PRUNED, RUNNING), the best complete one marked best by the study's direction.
--csv: the same table as CSV.
""",
    "lr-preview": """usage: trainwire lr-preview [hydra overrides ...] [-o lr.png]

Draws the lr of every optimizer step that the composed config's schedule would produce, without
training (e.g. lr.warmup_epochs=5 trainer.max_epochs=30). Default output: lr.png.
""",
    "lr-find": """usage: trainwire lr-find [hydra overrides ...] [--steps 100] [--start-lr 1e-7] [--end-lr 10] [-o lr_find.png]

The LR range test: trains a fresh copy of the configured model with an lr growing exponentially
from --start-lr to --end-lr over --steps steps (or until the loss diverges), prints a suggested
optimizer.lr and plots the loss against the lr. Default output: lr_find.png.
""",
    "evaluate": """usage: trainwire evaluate RUN_DIR|CHECKPOINT [key=value ...] [--json]

Scores a run's best weights (a run folder: checkpoints/best.pt, else its newest checkpoint; or
the checkpoint file given) with the run's objective on its data's test split, or on its
validation split when it has none. The run is rebuilt from its own config.yaml with the given
key=value overrides on top (data.batch_size=256, trainer.device=cpu). Prints a table of
metric and value, or one JSON object with --json (checkpoint, split, run_dir, metrics).
Nothing is written into the run folder.
""",
    "export-weights": """usage: trainwire export-weights RUN_DIR|CHECKPOINT [-o model.pt] [--format torch|safetensors]

Writes a checkpoint's model weights as a plain state dict, for inference. From a run folder it
takes the run's best weights (checkpoints/best.pt; its newest checkpoint when the run kept no
best.pt) and says which; from a checkpoint file, that file. Single-file and FSDP-sharded
checkpoints alike. --format torch (default; torch.load(..., weights_only=True) reads it) or
safetensors (also chosen by an output named *.safetensors; pip install safetensors). An output
inside a checkpoint folder is refused: it could replace the checkpoint a resume needs.
""",
}

_TRAIN = """usage: trainwire train [group=option ...] [key=value ...] [-m] [--cfg job] [--hydra-help]

Trains the job the config composes: with no overrides, an MLP on the bundled digits. Choose an
option of a group with group=option, set any key with key=value (optimizer.lr=3e-3), a preset
with experiment=NAME; -m sweeps over comma-separated values (optimizer.lr=1e-3,3e-3); -m hpo=optuna
searches (pip install 'trainwire[tune]'): -m hpo=optuna 'optimizer.lr=tag(log, interval(1e-4, 0.3))'.

Config groups (group=option; * marks the default; custom takes your own class: group._target_=mod.Class):
{groups}

Every key with its default, for the options chosen: trainwire train --cfg job [group=option ...]
Hydra's own flags: trainwire train --hydra-help
"""


def _packaged(group: str) -> set[str]:
    """The YAML files of ``configs/<group>/``: options with deltas (or of their own), and presets."""
    folder = resources.files("trainwire.configs").joinpath(*group.split("/"))
    if not folder.is_dir():
        return set()
    return {entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def _defaults() -> dict[str, str]:
    """The root config's choices (``configs/train.yaml``'s defaults list): group -> option."""
    import yaml

    root = yaml.safe_load(resources.files("trainwire.configs").joinpath("train.yaml").read_text(encoding="utf-8"))
    return {key: str(value) for item in root.get("defaults", []) if isinstance(item, dict)
            for key, value in item.items()}


def _shown(name: str, option: Any, default: str | None) -> str:
    """``name``, ``*`` when it is the default, and where a plug-in's option comes from (``module:Class``)."""
    plugin = f" ({option.reference})" if option is not None and option.origin != "trainwire" else ""
    return f"{name}{'*' if name == default else ''}{plugin}"


def train_help() -> str:
    """``trainwire train --help``: the usage, and each group's options, installed plug-ins included."""
    from trainwire import registry

    defaults = _defaults()
    lines = []
    width = max(map(len, registry.GROUPS)) + 2
    for group, spec in registry.GROUPS.items():
        found = registry.options(group)
        names = sorted(set(found) | _packaged(group) | (set() if spec.multi else {"custom"}))
        shown = [_shown(name, found.get(name), defaults.get(group)) for name in names]
        note = "  (several at once: sink=[wandb,tensorboard])" if spec.multi else ""
        lines.append(f"  {group.ljust(width)}{', '.join(shown)}{note}")
    presets = sorted(_packaged("experiment"))
    lines.append(f"  {'experiment'.ljust(width)}{', '.join(presets)}  (presets over the choices above; none by default)")
    searches = sorted(_packaged("hpo"))
    lines.append(f"  {'hpo'.ljust(width)}{', '.join(searches)}  (a search with -m: Hydra's sweeper; none by default)")
    return _TRAIN.format(groups="\n".join(lines))


def command_help(command: str) -> str:
    """The help of ``command`` (one of the CLI's commands)."""
    return train_help() if command == "train" else HELP[command]
