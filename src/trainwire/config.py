"""Config for Hydra: the schema of each option, read from its class's signature, and composition.

Each option of a group (``trainwire.registry``) has one schema, a dataclass made from its
target's signature: the parameters are the keys, their defaults the values, their annotations
the types, so a default lives in one place, the constructor. A wrong key or type fails when
Hydra composes the config, with the key named. The YAML tree in ``trainwire.configs`` holds only
what a signature cannot say: the root's choices, interpolations between groups
(``in_features: ${data.in_features}``), a packaged preset's deltas, and ``experiment/`` presets.
Schemas go into Hydra's ConfigStore when ``compose`` or the CLI runs, never at import.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import re
import threading
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, List, Optional, Union

from omegaconf import MISSING, DictConfig, OmegaConf

from trainwire import registry
from trainwire.errors import ConfigError
from trainwire.loop.trainer import TrainerSettings

CONFIG_MODULE = "trainwire.configs"
GROUPS = tuple(registry.GROUPS)
MULTI_SELECT = tuple(group for group, spec in registry.GROUPS.items() if spec.multi)  # sink=[a,b]: one node each
# Groups nested inside an option of a slot's group: their options are schemas too, but no slot selects on them.
SUBGROUPS = ("objective/loss",)
PROGRESS = ("auto", "always", "never")


# root ----------------------------------------------------------------------------------------
@dataclass
class LogConfig:
    """The ``log`` node: how the CLI prints structured logs."""


    format: str = "auto"  # auto: human-readable on a terminal, JSON otherwise
    level: str = "info"


@dataclass
class TrainConfig:
    """The root schema; ``trainer`` is ``TrainerSettings``, each group's node its chosen option's schema."""


    seed: int = 0
    run_dir: Optional[str] = None  # the CLI sets the Hydra run directory
    sink_timeout_s: float = 60.0  # a sink call running longer than this is abandoned (ADR 0010)
    progress: str = "auto"  # the progress bar: auto (on a terminal), always, never
    stage: Optional[str] = None  # a prefix for every metric and summary key of this run (pre -> pre/train/loss)
    metrics_every: dict[str, int] = field(default_factory=dict)  # validation metric -> every N epochs
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    log: LogConfig = field(default_factory=LogConfig)
    lr: Any = MISSING
    stopping: Any = MISSING
    gradient: Any = MISSING
    sink: Any = field(default_factory=dict)  # name -> that sink's node
    optimizer: Any = MISSING
    objective: Any = MISSING
    model: Any = MISSING
    data: Any = MISSING
    paradigm: Any = MISSING
    step: Any = MISSING
    nonfinite: Any = MISSING
    checkpoint: Any = MISSING
    store: Any = MISSING
    strategy: Any = MISSING
    # Staged training's stage-2 keys, at the root so the command reads
    # `experiment=finetune encoder=<path> freeze_base=true`; model=predictor reads them.
    encoder: Optional[str] = None
    freeze_base: bool = False


# schemas from signatures --------------------------------------------------------------------
_SCALARS = (int, float, bool, str)


def _config_type(hint: Any) -> Any:
    """The nearest type OmegaConf can check for an annotation (Any where it has none)."""
    if hint in _SCALARS or hint is Any:
        return hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        rest = [arg for arg in args if arg is not type(None)]
        inner = _config_type(rest[0]) if len(rest) == 1 else Any
        return Optional[inner] if len(rest) < len(args) and inner is not Any else inner
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence):
        item = _config_type(args[0]) if args and (len(args) == 1 or args[1] is Ellipsis or len(set(args)) == 1) else Any
        return List[item if item in _SCALARS else Any]
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        value = _config_type(args[1]) if len(args) == 2 else Any
        return Dict[str, value if value in _SCALARS else Any]
    return Any


def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # an annotation that does not evaluate (a name only imported for type checkers): untyped
        return {}


def _default(value: Any) -> Any:
    if value is inspect.Parameter.empty:
        return MISSING
    if isinstance(value, (list, tuple)):
        return field(default_factory=lambda: [_plain(item) for item in value])
    if isinstance(value, collections.abc.Mapping):
        return field(default_factory=lambda: {key: _plain(item) for key, item in value.items()})
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, collections.abc.Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def schema(group: str, name: str, target: Callable[..., Any]) -> type:
    """The dataclass schema of option ``name`` of ``group``: ``type`` and one field per config parameter."""
    hints = _hints(target)
    fields: list[tuple[str, Any, Any]] = [("type", str, field(default=name))]
    for parameter in registry.parameters(target, group):
        kind = _config_type(hints.get(parameter.name, Any))
        if parameter.default is None and kind is not Any and typing.get_origin(kind) is not Union:
            kind = Optional[kind]  # annotated `int` with a None default: None must compose too
        fields.append((parameter.name, kind, _default(parameter.default)))
    return dataclasses.make_dataclass(f"{group}={name}", fields)


def loss_schema(name: str) -> type:
    """The schema of a regression loss (``objective/loss``): ``name``, its parameters, ``reduction``."""
    from trainwire.policies.losses import available_losses

    fields: list[tuple[str, Any, Any]] = [("name", str, field(default=name))]
    for key, value in available_losses()[name].items():
        fields.append((key, _config_type(type(value)) if value is not None else Any, _default(value)))
    return dataclasses.make_dataclass(f"objective.loss={name}", fields)


def _packaged(group: str) -> set[str]:
    """The YAML files of ``configs/<group>/``: options with deltas, or options of their own (sink=null)."""
    folder = resources.files(CONFIG_MODULE).joinpath(*group.split("/"))
    if not folder.is_dir():
        return set()
    return {entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def _chosen(overrides: Iterable[str]) -> dict[str, set[str]] | None:
    """The options each override picks (``lr=a``, ``sink=[a,b]``, ``lr=a,b``); None: a config folder may pick any."""
    chosen: dict[str, set[str]] = {}
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if key.startswith("hydra.searchpath"):
            return None
        if sep and key in registry.GROUPS:
            chosen.setdefault(key, set()).update(v.strip(" '\"") for v in value.strip("[]").split(","))
    return chosen


def register_schemas(overrides: Iterable[str] = ()) -> None:
    """Stores every option's schema in Hydra's ConfigStore. Idempotent.

    An option without a YAML file is stored as the group's option itself (``lr/constant``); one
    with a YAML file of deltas as ``schema/<group>/<option>``, which that file extends. The
    built-in options are all stored; a package's (entry points) when ``overrides`` choose them,
    so that a plug-in is imported only when used (all of them when a ``hydra.searchpath`` is given).
    """
    from hydra.core.config_store import ConfigStore

    from trainwire.policies.losses import available_losses

    store = ConfigStore.instance()
    _store(store, None, "train_schema", TrainConfig, lambda: TrainConfig)
    chosen = _chosen(overrides)
    for group, spec in registry.GROUPS.items():
        packaged = _packaged(group)
        for name, option in registry.options(group).items():
            if option.origin != "trainwire" and chosen is not None and name not in chosen.get(group, ()):
                continue
            target = option.load()
            if name in packaged:
                _store(store, f"schema/{group}", name, target, lambda: schema(group, name, target))
            else:
                _store(store, group, name, target, lambda: {name: schema(group, name, target)} if spec.multi
                       else schema(group, name, target))
    for group, node in custom_nodes().items():
        _store(store, group, CUSTOM, str(node), lambda: node)
    packaged = _packaged("objective/loss")
    for name, parameters in available_losses().items():
        _store(store, "schema/objective/loss" if name in packaged else "objective/loss", name, str(parameters),
               lambda: loss_schema(name))


# What register_schemas stored, (group, name) -> (what it was made from, the stored node). Making a
# schema and storing it is about a third of a compose, and each compose stores the same again: a node
# is stored anew only when its source changed, or when the ConfigStore no longer holds the one stored.
_STORED: dict[tuple[str | None, str], tuple[Any, Any]] = {}


def _store(store: Any, group: str | None, name: str, source: Any, node: Callable[[], Any]) -> None:
    seen = _STORED.get((group, name))
    if seen is not None and seen[0] == source and _held(store, group, name) is seen[1]:
        return
    store.store(group=group, name=name, node=node())
    _STORED[(group, name)] = (source, _held(store, group, name))


def _held(store: Any, group: str | None, name: str) -> Any:
    """The node the ConfigStore holds as ``group/name``; None when it holds none."""
    folder = store.repo
    for part in group.split("/") if group else ():
        folder = folder.get(part, {})
    return folder.get(f"{name}.yaml")


# The user's own class or function in a slot: `model._target_=mylab.SmallCNN` selects `model=custom`.
CUSTOM = "custom"


def custom_nodes() -> dict[str, dict[str, Any]]:
    """The ``custom`` option of each single-select group: a ``_target_`` and the user's own keys (``+model.channels=8``).

    A custom ``data`` node also has ``batch_size`` and ``num_workers``: they build the loaders of
    a target that returns Datasets, and reach the target only if it names them.
    """
    nodes: dict[str, dict[str, Any]] = {group: {"_target_": MISSING} for group, spec in registry.GROUPS.items()
                                        if not spec.multi}
    for group, keys in OWN_KEYS.items():
        nodes[group].update(keys)
    return nodes


# Keys a custom (``_target_``) node of a group always has, for trainwire's own use; the target gets them
# only if it names them (a data target returning Datasets gets loaders built with these).
OWN_KEYS = {"data": {"batch_size": 64, "num_workers": 0, "timeout_s": 300.0}}
# In a custom node: the keys the user gave on the command line. Only these reach the target (ADR 0025).
GIVEN = "_given_"


def _custom_targets(overrides: list[str]) -> list[str]:
    """``group._target_=X`` selects the group's ``custom`` option first, unless the overrides pick an option.

    A ``_target_`` replaces its slot's keys entirely: a preset (``experiment=gan``) merges its
    keys for the default option (``optimizer.betas``) into whatever option fills the slot, so the
    node also records, under ``_given_``, the keys the command line gave the target; the container
    passes it those alone.
    """
    picked = {override.lstrip("+~").partition("=")[0] for override in overrides if "=" in override}
    targeted = [key[: -len("._target_")] for key, sep, _ in (o.lstrip("+").partition("=") for o in overrides)
                if sep and key.endswith("._target_")]
    result = []
    for override in overrides:
        key, sep, value = override.lstrip("+").partition("=")
        group = key[: -len("._target_")] if key.endswith("._target_") else None
        if sep and group in registry.GROUPS and not registry.GROUPS[group].multi and group not in picked:
            result.append(f"{group}={CUSTOM}")
            picked.add(group)
            override = f"{key}={value}"
        elif sep and key.partition(".")[0] in targeted and override.startswith("+") and not override.startswith("++"):
            override = "+" + override  # +optimizer.lr=0.1 adds the key, or sets the one a preset merged in
        result.append(override)
    for group in targeted:
        if group in registry.GROUPS and not registry.GROUPS[group].multi:
            given = sorted({key.partition(".")[2].partition(".")[0] for key, sep, _ in
                            (o.lstrip("+~").partition("=") for o in overrides)
                            if sep and key.startswith(f"{group}.") and key != f"{group}._target_"})
            result.append(f"+{group}.{GIVEN}=[{','.join(given)}]")
    return result


def given_keys_only(plain: dict[str, Any]) -> dict[str, Any]:
    """``plain`` with each custom node cut down to its ``_target_``, the keys the command line gave it, and
    trainwire's own keys (``data.batch_size``): no key of the default option or of a preset reaches the target."""
    for group in registry.GROUPS:
        node = plain.get(group)
        if isinstance(node, dict) and GIVEN in node:
            keep = {"_target_", *node[GIVEN], *OWN_KEYS.get(group, ())}
            plain[group] = {key: value for key, value in node.items() if key in keep}
    return plain


def options(group: str) -> list[str]:
    """The options of ``group``: registered (built in or by entry points), packaged as YAML, and ``custom``."""
    if group in registry.GROUPS:
        names = set(registry.options(group)) | _packaged(group) | (set() if registry.GROUPS[group].multi else {CUSTOM})
    elif group == "objective/loss":
        from trainwire.policies.losses import available_losses

        names = set(available_losses()) | _packaged(group)
    else:
        names = _packaged(group)
    return sorted(names)


def explain(error: BaseException) -> ConfigError | None:
    """One ConfigError line for a Hydra composition error about a key or a value; None for any other."""
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        OmegaConfBaseException,
        ValidationError,
    )

    cause = error
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    full_key = getattr(cause, "full_key", None)
    if not full_key:
        return None
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and moved(full_key) is not None:
        return moved(full_key)  # an old key in a config file of the user's
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and isinstance(cause.parent_node, DictConfig):
        parent = full_key.rpartition(".")[0]
        if OmegaConf.get_type(cause.parent_node) is dict:  # a free-form mapping (sink.mlflow.tags): keys are added
            return ConfigError(f"{full_key} is not in {parent or 'the config'} yet; add it with +{full_key}=<value>")
        return registry.unknown_key(full_key, [str(key) for key in cause.parent_node], parent or "the config")
    if isinstance(cause, ValidationError):
        return ConfigError(f"{full_key}={cause.value!r}: {str(cause.msg).splitlines()[0]}")
    return None



def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers, interpolations resolved and values checked (``check_values``).

    One ConfigError line for an interpolation that cannot be resolved or a value no key takes.
    """
    from omegaconf.errors import InterpolationResolutionError

    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as error:
        key = getattr(error, "full_key", None) or "the config"
        raise ConfigError(f"{key}: {str(error.msg if hasattr(error, 'msg') else error).splitlines()[0]}; "
                          f"set {key}=<value>") from None
    check_values(plain)
    return plain


# The largest integer a config value may be: torch, NumPy and the OS take signed 64-bit integers.
INT_MAX = 2**63 - 1


def check_values(plain: Mapping[str, Any]) -> None:
    """Refuses, in one line naming the key, what no setting takes: an integer past 64 bits, and NaN or inf.

    The one check of these for every key (ADR 0025): a float may be NaN or infinite only where the
    parameter's default is, or where it is annotated ``Annotated[float, registry.INFINITY]`` (inf,
    never NaN). A number past 64 bits would fail deep inside torch; a NaN would train silently
    (``stopping.min_delta=nan`` never improves) or fail later without the key.
    """
    for key, value in _leaves(plain):
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and not -INT_MAX - 1 <= value <= INT_MAX:
            raise ConfigError(f"{key}={value} is too large: an integer here is at most 2**63-1")
        if isinstance(value, float) and not math.isfinite(value) and not _may_be(key, value, plain):
            raise ConfigError(f"{key}={value} must be a finite number")


def _leaves(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every scalar in ``node``; a list's items are named by the list's key."""
    if isinstance(node, Mapping):
        for name, value in node.items():
            yield from _leaves(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _leaves(value, key)
    else:
        yield key, node


def _may_be(key: str, value: float, plain: Mapping[str, Any]) -> bool:
    """Whether the parameter behind ``key`` takes the non-finite ``value`` (its default is one, or it says so)."""
    parts = key.split(".")
    found = _parameter(parts, plain)
    if found is None:
        return False
    default, hint = found
    if isinstance(default, float) and ((math.isnan(value) and math.isnan(default))
                                       or (math.isinf(value) and math.isinf(default))):
        return True
    hints = [hint, *typing.get_args(hint)] if typing.get_origin(hint) in (Union, types.UnionType) else [hint]
    return math.isinf(value) and any(registry.INFINITY in getattr(each, "__metadata__", ()) for each in hints)


def _parameter(parts: list[str], plain: Mapping[str, Any]) -> tuple[Any, Any] | None:
    """The default and annotation of the parameter or field a key sets; None where none is known."""
    if parts[0] == "trainer" and len(parts) == 2:
        target: Any = TrainerSettings
        fields = {f.name: f.default for f in dataclasses.fields(TrainerSettings)}
        return (fields[parts[1]], typing.get_type_hints(target, include_extras=True).get(parts[1])) \
            if parts[1] in fields else None
    spec = registry.GROUPS.get(parts[0])
    if spec is None:
        return None
    node, rest = (plain.get(parts[0], {}).get(parts[1], {}), parts[2:]) if spec.multi and len(parts) > 1 \
        else (plain.get(parts[0], {}), parts[1:])
    if len(rest) != 1 or not isinstance(node, Mapping):
        return None
    try:
        target = (registry.locate(node["_target_"], parts[0]) if "_target_" in node
                  else registry.option(parts[0], node.get("type")).load())
        parameter = inspect.signature(target).parameters.get(rest[0])
    except Exception:  # noqa: BLE001 - an option or target that does not load is reported where it is built
        return None
    try:
        hint = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target,
                                     include_extras=True).get(rest[0])
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate: the default alone decides
        hint = None
    return None if parameter is None else (parameter.default, hint)


def check_overrides(overrides: list[str], *, sweep: bool = False) -> list[Any]:
    """Hydra's parse of each override, or one ConfigError line: a value its grammar cannot read, a sweep without ``-m``.

    Hydra reports either over several lines (``LexerNoViableAltException``, "Ambiguous value");
    here the line says what to write. ``sweep``: ``-m`` was given, so ``a=1,2`` is a sweep.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, parsed = OverridesParser.create(), []
    for override in overrides:
        try:
            parsed.append(parser.parse_override(override))
        except HydraException as error:
            key, _, value = override.partition("=")
            if not value.isascii():
                raise ConfigError(f"{override}: the override grammar reads only ASCII outside quotes; quote the value: "
                                  f"{key}='{value}' (in a shell: \"{key}='{value}'\")") from None
            raise ConfigError(f"{override}: {str(error).splitlines()[0]}; quote a value with spaces or "
                              f"symbols: {key}='{value}'") from None
        if parsed[-1].is_sweep_override() and not sweep:
            key, _, value = override.partition("=")
            other = "" if key.lstrip("+~") in CHOICE_GROUPS else f"; for a list write {key}=[{value}], for text {key}='{value}'"
            raise ConfigError(f"{override} is a sweep: add -m to run one job for each value{other}")
        if parsed[-1].key_or_group == "hpo" and not sweep:  # a search preset runs trials, and only a sweep has them
            raise ConfigError(f"{override} is a search: add -m to run its trials (trainwire train -m {override} ...)")
    return parsed


def check_booleans(plain: Mapping[str, Any], parsed: Iterable[Any]) -> None:
    """Refuses a number other than 0 or 1 given for a true/false key (OmegaConf reads ``trainer.compile=2`` as true)."""
    for override in parsed:
        value = override.value() if not override.is_sweep_override() and not override.is_delete() else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value in (0, 1):
            continue
        node: Any = plain
        for part in override.key_or_group.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, bool):
            raise ConfigError(f"{override.key_or_group}={override.get_value_element_as_str()}: a true/false key "
                              "takes true, false, 1 or 0, not another number")


# experiment/ holds `# @package _global_` presets that pick options of the groups above; hpo/ the search presets.
CHOICE_GROUPS = (*GROUPS, *SUBGROUPS, "experiment", "hpo")
_DOTTED_SUBGROUPS = {group.replace("/", "."): group for group in SUBGROUPS}


# W&B is the common tracker: its keys may be written at the sink level, as the foundation named them.
_WANDB_SHORTHANDS = {f"sink.{key}" for key in ("project", "entity", "name", "mode", "tags", "dir")}


# Keys that moved to a group of their own (ADR 0025): an old key is refused with one line naming the new one.
MOVED = {"trainer.nonfinite": "nonfinite", "trainer.max_nonfinite": "nonfinite.max_in_a_row",
         "trainer.checkpoint_every": "checkpoint.every_n_epochs",
         "trainer.checkpoint_every_n_steps": "checkpoint.every_n_steps", "trainer.strategy": "strategy",
         "trainer.keep_last": "store.keep_last"}
# Options that moved to another group: `paradigm=gan` is `step=gan`.
MOVED_OPTIONS = {("paradigm", "gan"): "step", ("paradigm", "gbdt"): "step"}


def moved(key: str, value: Any = "<value>") -> ConfigError | None:
    """The one line for a key (``trainer.nonfinite``) or an option (``paradigm=gan``) that moved; None otherwise."""
    group = MOVED_OPTIONS.get((key, str(value).strip("'\"")))
    if group is not None:
        return ConfigError(f"{key}={value} moved: write {group}={value} (paradigm says what happens around the loop, "
                           "step which step runs in it)")
    if key in MOVED:
        return ConfigError(f"{key} moved: write {MOVED[key]}={value}")
    prefix, _, name = key.partition(".")
    if prefix == "paradigm" and name and name in _gan_step_keys():
        return ConfigError(f"{key} moved: write step.{name}={value} (with step=gan)")
    return None


def _gan_step_keys() -> set[str]:
    return {parameter.name for parameter in registry.parameters(registry.option("step", "gan").load(), "step")}


def check_choices(overrides: list[str]) -> list[str]:
    """Checks that each override that picks a group option names one that exists; returns them ready for Hydra.

    Hydra would fail too, but over several lines; this names the key, the value and the
    choices in one. ``sink=null`` is quoted on the way, because Hydra reads a bare null as "no
    option" for a group. A multi-select group takes a list: ``sink=[wandb,tensorboard]``.
    ``sink.project``, ``sink.entity``, ``sink.name``, ``sink.mode``, ``sink.tags`` and ``sink.dir``
    are short for the W&B sink's ``sink.wandb.*`` keys.
    """
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        refusal = moved(key, value) if sep else None
        if refusal is not None:
            raise refusal
    overrides = _custom_targets(overrides)
    if any(override.startswith(("hydra.searchpath", "+hydra.searchpath")) for override in overrides):
        return overrides  # the user's own config folders may add options: Hydra judges those
    checked = []
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if sep and key in _WANDB_SHORTHANDS:  # sink.mode=offline reads as sink.wandb.mode=offline
            key = f"sink.wandb.{key.partition('.')[2]}"
            override = override[: len(override) - len(override.lstrip("+~"))] + f"{key}={value}"
        if sep and key.replace("/", ".") in _DOTTED_SUBGROUPS and re.fullmatch(r"[\w,'\"]+", value):
            # `objective.loss=huber` reads as the issue wrote it; Hydra selects a nested group as `objective/loss`.
            key = _DOTTED_SUBGROUPS[key.replace("/", ".")]
            override = override[: len(override) - len(override.lstrip("+~"))] + f"{key}={value}"
        if sep and key in MULTI_SELECT and value.startswith("[") and value.endswith("]"):
            valid = options(key)
            choices = [choice.strip().strip("'\"") for choice in value[1:-1].split(",") if choice.strip()]
            for choice in choices:
                if choice not in valid or choice == "null":
                    raise ConfigError(f"{key}={choice!r} is not an option; choose some of: "
                                      f"{', '.join(v for v in valid if v != 'null')}")
            checked.append(f"{override.partition('=')[0]}=[" + ",".join(f"'{c}'" for c in choices) + "]")
            continue
        if sep and key in CHOICE_GROUPS and not any(mark in value for mark in "${[("):  # not sweep functions
            choices = [choice.strip("'\"") for choice in value.split(",")]  # a,b is a multirun sweep
            valid = options(key)
            for choice in choices:
                if choice not in valid:
                    raise ConfigError(f"{key}={choice!r} is not an option; choose one of: {', '.join(valid)}")
            override = f"{override.partition('=')[0]}=" + ",".join(f"'{choice}'" for choice in choices)
        checked.append(override)
    return checked


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Composes the packaged config with ``overrides`` (Hydra's override syntax), without the CLI.

    For services and tests; the CLI composes the same tree through ``@hydra.main``. Safe to call
    from any thread (calls are serialised: Hydra's state is global).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import ConfigCompositionException

    parsed = check_overrides(list(overrides or []))
    overrides = check_choices(list(overrides or []))
    # Hydra keeps one global state per process: the context saves it and puts it back (a caller's
    # own Hydra app is undisturbed), and the lock keeps two threads from initializing it at once.
    with _COMPOSE_LOCK:
        register_schemas(overrides)
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            try:
                cfg = hydra_compose(config_name="train", overrides=overrides)
            except ConfigCompositionException as error:
                explained = explain(error)
                if explained is None:
                    raise
                raise explained from error
    _checked(cfg, parsed)
    return cfg


def _checked(cfg: DictConfig, parsed: list[Any]) -> None:
    """The value checks of a composed config (an interpolation that cannot resolve is left for ``resolved`` to name)."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return
    check_values(plain)
    check_booleans(plain, parsed)


_COMPOSE_LOCK = threading.Lock()
