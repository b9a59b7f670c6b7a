"""``trainwire evaluate RUN_OR_CHECKPOINT [key=value ...]``: a run's best weights, scored again (ADR 0034).

The run is rebuilt from its own resolved config (``config.yaml`` in the run folder, as the run
record wrote it) with the given ``key=value`` overrides on top (``data.batch_size=256``), so the
model, the data and the objective are the ones it trained with. The weights are a run folder's
best (``checkpointing.export.weights_checkpoint``, as ``export-weights`` ships them) or the
checkpoint file given, loaded weights-only by the loader of ``trainer.init_from``. They are
scored by ``Trainer.evaluate``, the trainer's own validation pass, on the data's test split when
it has one, else on its validation split. Nothing is written: the container is built without
checkpoint store and sinks, in one process, and uncompiled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from trainwire.errors import ConfigError

_NOT_ON_REPLAY = ("run_dir", "strategy", "trainer.resume", "trainer.init_from", "trainer.compile")


def _sources(target: str) -> tuple[Path, Path]:
    """The checkpoint to score and the run folder whose ``config.yaml`` rebuilds its run."""
    from trainwire.checkpointing.export import weights_checkpoint
    from trainwire.errors import CheckpointError

    path = Path(target)
    if path.is_dir():
        try:
            checkpoint = weights_checkpoint(path)
        except CheckpointError as error:
            raise ConfigError(f"evaluate {target}: {error}") from None
        run = path.parent if path.name == "checkpoints" and not (path / "config.yaml").is_file() else path
        return checkpoint, run
    if not path.is_file():
        raise ConfigError(f"evaluate {target}: no such run folder or checkpoint file")
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path, run


def _config(run: Path, overrides: list[str]) -> dict[str, Any]:
    """The run's resolved config with ``overrides`` set (each an existing key), for one process that writes nothing."""
    import yaml

    from trainwire.config import check_overrides

    source = run / "config.yaml"
    if not source.is_file():
        raise ConfigError(f"evaluate: {run} holds no config.yaml (the run's resolved config), so its run "
                          "cannot be rebuilt; give the run folder the checkpoint came from")
    try:
        plain = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"evaluate: {source} cannot be read: {str(error).splitlines()[0]}") from None
    if not isinstance(plain, dict):
        raise ConfigError(f"evaluate: {source} is not a config (a mapping of keys)")
    for override, parsed in zip(overrides, check_overrides(overrides, sweep=True)):
        key = parsed.key_or_group
        if parsed.is_delete() or parsed.is_add() or parsed.is_force_add() or parsed.is_sweep_override():
            raise ConfigError(f"evaluate {override}: only key=value overrides of the run's config are taken, "
                              "one value each")
        if key.startswith(_NOT_ON_REPLAY):
            raise ConfigError(f"evaluate {override}: {key} is set by evaluate itself (one process, no checkpoints)")
        node, *path = [plain, *key.split(".")]
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or path[-1] not in node or isinstance(node[path[-1]], dict):
            raise ConfigError(f"evaluate {override}: {key} is not a setting of the run's config ({source}); "
                              "a group's option (data=diabetes) cannot change: the weights fit the run's own")
        node[path[-1]] = parsed.value()
    plain.update(run_dir=str(run), strategy={"type": "single"})
    plain["trainer"] = {**plain.get("trainer", {}), "resume": None, "init_from": None, "compile": False}
    return plain


def evaluate(target: str, overrides: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """The metrics of ``target``'s weights on its run's test split (else validation split), and where they came from."""
    from dependency_injector import providers

    from trainwire import logs
    from trainwire.checkpointing.initial import KEY, load_initial_weights
    from trainwire.containers import build_container
    from trainwire.sinks.base import NullSink

    checkpoint, run = _sources(target)
    container = build_container(_config(run, overrides))
    container.checkpoint_store.override(providers.Object(None))  # nothing of the run folder is touched
    container.sink.override(providers.Object(NullSink()))
    loaders = container.data()
    split, data = ("test", loaders.test) if loaders.test is not None else ("val", loaders.val)
    if data is None:
        raise ConfigError(f"evaluate {target}: the run's data have no validation or test split to score on "
                          "(data.val_fraction=0?)")
    model = container.model()
    log = logs.get_logger()
    try:
        load_initial_weights(model, checkpoint, strict=True, log=log)
    except ConfigError as error:  # the loader speaks of trainer.init_from; here the checkpoint is the argument
        raise ConfigError(str(error).replace(f"{KEY}=", "evaluate ", 1)) from None
    metrics = container.trainer().evaluate(model, data, split=split)
    return metrics, {"checkpoint": str(checkpoint), "split": split, "run_dir": str(run)}


def _shown(value: float) -> str:
    return f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) else str(value)


def table(metrics: dict[str, float], source: dict[str, Any]) -> str:
    """The metrics as a two-column table, the loss first, with where they came from above it."""
    names = sorted(metrics, key=lambda name: (not name.endswith("/loss"), name))
    width = max(len("metric"), *(len(name) for name in names))
    lines = [f"{source['checkpoint']} on the {source['split']} split", f"{'metric'.ljust(width)}  value"]
    lines += [f"{name.ljust(width)}  {_shown(metrics[name])}" for name in names]
    return "\n".join(lines) + "\n"


def main(args: list[str]) -> str:
    """``trainwire evaluate``'s output: the table, or one JSON object with ``--json``."""
    as_json = "--json" in args
    rest = [arg for arg in args if arg != "--json"]
    if not rest or rest[0].startswith("-") or "=" in rest[0]:
        raise ConfigError("evaluate needs a run folder or a checkpoint file first, then key=value overrides")
    metrics, source = evaluate(rest[0], rest[1:])
    if as_json:
        return json.dumps({**source, "metrics": metrics}) + "\n"
    return table(metrics, source)
