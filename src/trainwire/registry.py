"""One registry per port: the options each config group offers, and how one is built from its node.

An option is a name in a group (``lr=warmup_cosine``) bound to a class or factory function,
written ``"module:attr"``. The built-in options are listed here; a package adds its own under
the Python entry-point group ``trainwire.<group>``, in its ``pyproject.toml``::

    [project.entry-points."trainwire.lr"]
    step_decay = "mypkg.lr:StepDecay"

after which ``trainwire train lr=step_decay lr.every=2`` works. The target's signature is the
option's schema: each parameter is a config key with the parameter's default, except those the
container supplies (``Group.context``). Entry points are read when a group's options are listed
and imported only when one of them is chosen; importing this module does neither.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from trainwire.errors import ConfigError

ENTRY_POINT_PREFIX = "trainwire."
EMPTY = inspect.Parameter.empty
# A float parameter that may be infinite (``norm_type: Annotated[float, INFINITY] = 2.0``: the max-norm). Every
# other config float is refused as NaN or infinite (``trainwire.config.check_values``), unless its default is.
INFINITY = "infinity allowed"


@dataclass(frozen=True)
class Group:
    """A config group: the port its options implement and the options built in.

    ``port`` (``"module:Class"``, None: not checked) is what a built option must be an instance
    of. ``context`` names the parameters the container passes itself (the run's seed, the
    Trainer, ...): a target may take any of them, and they are never config keys.
    ``multi``: several options are chosen at once, each its own node (``sink=[wandb,mlflow]``).
    """

    port: str | None
    builtins: Mapping[str, str]
    context: tuple[str, ...] = ()
    multi: bool = False


GROUPS: dict[str, Group] = {
    "lr": Group("trainwire.policies.lr:LRPolicy", {
        "warmup_cosine": "trainwire.policies.lr:WarmupCosine", "constant": "trainwire.policies.lr:Constant",
        "cosine_restarts": "trainwire.policies.lr:CosineWarmRestarts", "plateau": "trainwire.policies.lr:ReduceOnPlateau"}),
    "stopping": Group("trainwire.policies.stopping:StoppingPolicy", {
        "patience": "trainwire.policies.stopping:PatienceStopper", "none": "trainwire.policies.stopping:NeverStop"}),
    "gradient": Group("trainwire.policies.gradients:GradientPolicy", {
        "norm_clip": "trainwire.policies.gradients:NormClipper", "value_clip": "trainwire.policies.gradients:ValueClipper",
        "none": "trainwire.policies.gradients:NoClip"}),
    "sink": Group("trainwire.sinks.base:MetricsSink", {
        "wandb": "trainwire.sinks.wandb:WandbSink", "tensorboard": "trainwire.sinks.tensorboard:TensorBoardSink",
        "mlflow": "trainwire.sinks.mlflow:MLflowSink"}, context=("run_dir", "config", "config_yaml"), multi=True),
    # An optimizer option builds a factory, parameters -> Optimizer: the parameters are known only inside fit.
    "optimizer": Group(None, {
        "adamw": "trainwire.policies.optim:adamw", "adam": "trainwire.policies.optim:adam", "sgd": "trainwire.policies.optim:sgd"}),
    "objective": Group("trainwire.policies.objectives:Objective", {
        "classification": "trainwire.policies.objectives:Classification", "regression": "trainwire.policies.objectives:Regression",
        "masked_reconstruction": "trainwire.paradigms.pretraining:MaskedReconstruction",
        "nll": "trainwire.paradigms.generative:NegativeLogLikelihood",
        "adversarial": "trainwire.paradigms.adversarial:adversarial_classification", "gan": "trainwire.paradigms.gan:GANEvaluation",
        "model_loss": "trainwire.policies.objectives:ModelLoss"}),
    "model": Group("torch.nn:Module", {
        "mlp": "trainwire.models:MLP", "masked_autoencoder": "trainwire.paradigms.pretraining:MaskedAutoencoder",
        "predictor": "trainwire.paradigms.pretraining:Predictor.build", "gaussian_density": "trainwire.paradigms.generative:GaussianDensity",
        "gan": "trainwire.paradigms.gan:GAN", "lightgbm": "trainwire.paradigms.boosting:LightGBMModel"}),
    # A data option returns trainwire.data.Loaders (train, val), sharded by rank.
    "data": Group(None, {"digits": "trainwire.data:digits", "diabetes": "trainwire.data:diabetes"},
                  context=("seed", "rank", "world_size")),
    # What happens around the loop; which step runs in it is the `step` group's (ADR 0025).
    "paradigm": Group("trainwire.paradigms.base:Paradigm", {
        "supervised": "trainwire.paradigms.base:Supervised", "pretrain": "trainwire.paradigms.base:Pretrain"},
        context=("trainer", "run_dir")),
    # What one batch does to the weights. lr_policy_factory builds another lr policy (a second optimizer's);
    # stage_trainer(objective, max_epochs=...) a Trainer of the run (its settings, sinks, hooks) for a nested fit.
    "step": Group("trainwire.loop.steps:Step", {
        "supervised": "trainwire.loop.steps:SupervisedStep", "gan": "trainwire.paradigms.gan:gan_step",
        "gbdt": "trainwire.paradigms.boosting:GBDTStep"},
        context=("objective", "optimizer", "lr_policy", "lr_policy_factory", "gradient_policy", "stage_trainer")),
    # The loop's other policies, one option each (their constructor signatures are their schemas).
    "nonfinite": Group("trainwire.policies.nonfinite:NonFinitePolicy", {
        "skip": "trainwire.policies.nonfinite:SkipNonFinite", "raise": "trainwire.policies.nonfinite:RaiseOnNonFinite",
        "off": "trainwire.policies.nonfinite:IgnoreNonFinite"}),
    "checkpoint": Group("trainwire.policies.cadence:CheckpointPolicy", {"cadence": "trainwire.policies.cadence:Cadence"}),
    # Where checkpoints are kept; the container names the folder and the run's config (``hook`` is for tests).
    "store": Group("trainwire.checkpointing.store:CheckpointStore", {"local": "trainwire.checkpointing.store:LocalCheckpointStore"},
                   context=("directory", "config_yaml", "hook")),
    "strategy": Group("trainwire.runtime.distributed:Strategy", {
        "auto": "trainwire.runtime.distributed:auto_strategy", "single": "trainwire.runtime.distributed:SingleProcess",
        "ddp": "trainwire.runtime.distributed:DDP", "fsdp": "trainwire.runtime.distributed:FSDP"}),
}


@dataclass(frozen=True)
class Option:
    """One option of a group: ``reference`` is ``"module:attr"``; ``origin`` says who registered it."""

    group: str
    name: str
    reference: str
    origin: str = "trainwire"

    def load(self) -> Callable[..., Any]:
        """Imports the target; a target that cannot be imported is one ConfigError line naming the option."""
        try:
            target = resolve(self.reference)
        except Exception as error:  # a broken plug-in must not become a traceback
            raise ConfigError(f"{self.group}={self.name}: {self.origin} {self.reference!r} failed to load: "
                              f"{type(error).__name__}: {_first_line(error)}") from error
        if not callable(target):
            raise ConfigError(f"{self.group}={self.name}: {self.origin} {self.reference!r} is not a class or function")
        return target


def resolve(reference: str) -> Any:
    """The object ``"module:attr.attr"`` names (the entry-point syntax), imported now."""
    module, _, attrs = reference.partition(":")
    target: Any = importlib.import_module(module)
    for attr in attrs.split(".") if attrs else ():
        target = getattr(target, attr)
    return target


def locate(path: Any, key: str) -> Callable[..., Any]:
    """The class or function a ``_target_`` names (``mylab.SmallCNN``), imported now.

    Raises one ConfigError line naming ``<key>._target_`` and why it cannot be imported (chained
    to the ImportError, so a caller can tell a missing library from a typo).
    """
    if not isinstance(path, str) or not path.strip() or path == "???":
        raise ConfigError(f"{key}._target_={path!r}: name a class or function, e.g. {key}._target_=mymodule.MyClass")
    parts = path.split(".")
    error: Exception | None = None
    for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
        module_name = ".".join(parts[:cut])
        try:
            target: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as missing:
            if missing.name is None or not module_name.startswith(missing.name):
                error = missing  # the module exists but imports something missing: report that
                break
            error = error or missing
            continue
        except Exception as broken:  # the user's module raised while importing
            raise ConfigError(f"{key}._target_={path!r}: importing {module_name} failed: "
                              f"{type(broken).__name__}: {_first_line(broken)}") from broken
        try:
            for attr in parts[cut:]:
                target = getattr(target, attr)
        except AttributeError:
            raise ConfigError(f"{key}._target_={path!r}: {module_name} has no {'.'.join(parts[cut:])}") from None
        if not callable(target):
            raise ConfigError(f"{key}._target_={path!r} is not a class or function")
        return target
    hint = (" (is its folder the working directory, or on PYTHONPATH?)"
            if isinstance(error, ModuleNotFoundError) and error.name == parts[0] else "")
    raise ConfigError(f"{key}._target_={path!r} cannot be imported: {_first_line(error)}{hint}") from error


def _entry_points(group: str) -> list[Option]:
    found = _installed().select(group=ENTRY_POINT_PREFIX + group)
    return [Option(group, ep.name, ep.value, origin=f"entry point {ep.name} = {ep.value} "
                   f"(group {ep.group}, package {ep.dist.name if ep.dist else '?'})") for ep in found]


# Reading the installed packages' entry points costs ~9 ms, and one compose asks for about 14 groups:
# they are read once for as long as the import path and its folders are unchanged. A package installed
# (or a folder put on sys.path) since changes a folder's mtime or the path, and so reads them again.
_SEEN: dict[str, Any] = {"key": None, "entry_points": None}


def _installed() -> metadata.EntryPoints:
    key = tuple((entry, _mtime(entry)) for entry in sys.path)
    if _SEEN["key"] != key:
        _SEEN["entry_points"], _SEEN["key"] = metadata.entry_points(), key
    return _SEEN["entry_points"]


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path or ".").st_mtime_ns
    except OSError:
        return None


def options(group: str) -> dict[str, Option]:
    """Every option of ``group``, built in and from entry points (read now, not imported)."""
    found = {name: Option(group, name, reference) for name, reference in GROUPS[group].builtins.items()}
    for option in _entry_points(group):
        if option.name in found:  # one name, one meaning: silently preferring either would surprise someone
            raise ConfigError(f"{group}={option.name} is registered twice: by {found[option.name].origin} "
                              f"{found[option.name].reference!r} and by {option.origin}")
        found[option.name] = option
    return found


def option(group: str, name: str, key: str | None = None) -> Option:
    """The option ``name`` of ``group`` (at config key ``key``); ConfigError naming the choices when there is none."""
    found = options(group)
    if name not in found:
        raise ConfigError(f"{key or group}.type={name!r} is not an option; choose one of: {', '.join(sorted(found))}")
    return found[name]


def parameters(target: Callable[..., Any], group: str) -> list[inspect.Parameter]:
    """The config keys of ``target`` in ``group``: its named parameters less the container's context.

    ``type`` is never one: it names the option in the node.
    """
    context = GROUPS[group].context if group in GROUPS else ()
    return [parameter for parameter in inspect.signature(target).parameters.values()
            if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD, parameter.POSITIONAL_ONLY)
            and parameter.name not in (*context, "type") and configurable(parameter.default)]


def configurable(value: Any) -> bool:
    """Whether a default can be written in config (a parameter without a default is a required key)."""
    if value is EMPTY or value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(configurable(item) and item is not EMPTY for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(key, str) and configurable(item) and item is not EMPTY for key, item in value.items())
    return False


def unknown_key(key: str, valid: Iterable[str], node: str) -> ConfigError:
    """One line for a key that ``node`` does not have, with the nearest valid one when a typo is likely."""
    valid = [name for name in valid if name != "type"]
    nearest = difflib.get_close_matches(key.rpartition(".")[2], valid, n=1)
    hint = f" (did you mean {node}.{nearest[0]}?)" if nearest else ""
    return ConfigError(f"{key} is not a key of {node}{hint}; its keys are: {', '.join(valid) or '(none)'}")


def check_keys(group: str, node: Mapping[str, Any], key: str | None = None) -> Callable[..., Any]:
    """Loads the option ``node["type"]`` names and checks the node's keys against its signature; returns the target."""
    key = key or group
    target = option(group, node.get("type"), key).load()
    signature = inspect.signature(target)
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        valid = {p.name for p in parameters(target, group)}
        for name in node:
            if name != "type" and name not in valid:
                raise unknown_key(f"{key}.{name}", ["type", *valid], key)
    return target


def build(group: str, node: Mapping[str, Any], context: Mapping[str, Callable[[], Any]] | None = None,
          key: str | None = None) -> Any:
    """Builds the option that ``node["type"]`` names with the node's other keys.

    ``context`` maps the group's context names to zero-argument callables; only those the
    target's signature names are called. A value the target rejects (``ConfigError``,
    ``ValueError``, ``TypeError`` while it is built) becomes one ConfigError line naming the option.
    """
    key = key or group
    target = check_keys(group, node, key)
    names = inspect.signature(target).parameters
    kwargs = {name: value for name, value in node.items() if name != "type"}
    kwargs.update({name: supply() for name, supply in (context or {}).items() if name in names})
    try:
        built = target(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{key}={node['type']}: {_first_line(error)}") from error
    port = GROUPS[group].port
    if port is not None:
        expected = resolve(port)
        if not isinstance(built, expected):
            raise ConfigError(f"{key}={node['type']} built a {type(built).__name__}, which is not a "
                              f"{expected.__module__}.{expected.__qualname__}")
    return built


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
