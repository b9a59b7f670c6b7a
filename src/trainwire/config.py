"""Config schemas (one dataclass per option of each group) and composition without the CLI.

The YAML tree lives in ``trainwire.configs``; each YAML option extends its schema here, so a
wrong key or a wrong type fails when Hydra composes the config, with the key named.
Schemas are registered in Hydra's ConfigStore when ``compose`` or the CLI runs, never at import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from trainwire.errors import ConfigError
from trainwire.trainer import TrainerSettings

CONFIG_MODULE = "trainwire.configs"
GROUPS = ("lr", "stopping", "gradient", "sink", "optimizer", "objective", "model", "data", "paradigm")


# lr ------------------------------------------------------------------------------------------
@dataclass
class WarmupCosineConfig:
    type: str = "warmup_cosine"
    warmup_epochs: Optional[int] = None
    warmup_steps: Optional[int] = None
    start_factor: float = 1e-3
    min_lr: float = 0.0
    interval: str = "step"


@dataclass
class ConstantLRConfig:
    type: str = "constant"


@dataclass
class CosineRestartsConfig:
    type: str = "cosine_restarts"
    T0: int = 10
    T_mult: int = 2
    min_lr: float = 0.0
    interval: str = "epoch"


@dataclass
class PlateauConfig:
    type: str = "plateau"
    monitor: str = "val/loss"
    mode: str = "min"
    factor: float = 0.1
    patience: int = 10
    min_lr: float = 0.0


# stopping ------------------------------------------------------------------------------------
@dataclass
class PatienceConfig:
    type: str = "patience"
    monitor: str = "val/loss"
    mode: str = "min"
    patience: int = 10
    min_delta: float = 0.0
    goal: Optional[float] = None


@dataclass
class NoStoppingConfig:
    type: str = "none"


# gradient ------------------------------------------------------------------------------------
@dataclass
class NormClipConfig:
    type: str = "norm_clip"
    max_norm: Optional[float] = 1.0
    norm_type: float = 2.0


@dataclass
class ValueClipConfig:
    type: str = "value_clip"
    clip_value: float = 1.0


@dataclass
class NoClipConfig:
    type: str = "none"


# sink ----------------------------------------------------------------------------------------
# ``sink`` is a multi-select group: each chosen option adds its own node, ``sink.<option>``
# (``sink=[wandb,tensorboard]``); ``sink=null`` (the default) adds none.
@dataclass
class WandbSinkConfig:
    type: str = "wandb"
    project: Optional[str] = "trainwire"
    entity: Optional[str] = None
    name: Optional[str] = None
    mode: str = "online"
    tags: list[str] = field(default_factory=list)
    dir: Optional[str] = None  # null: the run directory


@dataclass
class TensorBoardSinkConfig:
    type: str = "tensorboard"
    log_dir: Optional[str] = None  # null: <run_dir>/tensorboard
    flush_secs: int = 30


@dataclass
class MLflowSinkConfig:
    type: str = "mlflow"
    tracking_uri: Optional[str] = None  # null: sqlite:///<run_dir>/mlflow.db
    experiment: str = "trainwire"
    run_name: Optional[str] = None
    tags: dict[str, str] = field(default_factory=dict)


# optimizer -----------------------------------------------------------------------------------
@dataclass
class AdamWConfig:
    type: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class AdamConfig:
    type: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class SGDConfig:
    type: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False


# objective, model, data ----------------------------------------------------------------------
@dataclass
class ClassificationConfig:
    type: str = "classification"
    label_smoothing: float = 0.0


@dataclass
class RegressionConfig:
    type: str = "regression"
    loss: Any = MISSING  # an option of objective/loss, chosen in regression.yaml's defaults


# objective/loss (a group nested in objective/regression) -------------------------------------
@dataclass
class MSELossConfig:
    name: str = "mse"
    reduction: str = "mean"


@dataclass
class MAELossConfig:
    name: str = "mae"
    reduction: str = "mean"


@dataclass
class HuberLossConfig:
    name: str = "huber"
    delta: float = 1.0
    reduction: str = "mean"


@dataclass
class MAPELossConfig:
    name: str = "mape"
    epsilon: float = 1e-6
    reduction: str = "mean"


@dataclass
class PhysicsInformedLossConfig:
    name: str = "physics_informed"
    monotonicity: float = 0.1
    smoothness: float = 0.1
    reduction: str = "mean"


@dataclass
class MaskedReconstructionConfig:
    type: str = "masked_reconstruction"
    mask_ratio: float = 0.5


@dataclass
class AdversarialConfig:
    type: str = "adversarial"
    attack: str = "pgd"                  # fgsm or pgd
    epsilon: float = 0.1                 # L-inf radius, in input units (digits' pixels are in [0, 1])
    steps: int = 5                       # pgd only
    step_size: Optional[float] = None    # pgd only; null: 2.5 * epsilon / steps
    label_smoothing: float = 0.0


@dataclass
class GANEvaluationConfig:
    type: str = "gan"
    eval_samples: int = 512  # generated samples compared with the validation data each epoch


@dataclass
class NLLConfig:
    type: str = "nll"
    eval_samples: int = 0  # > 0: samples drawn each evaluation for val/frechet_distance and the samples image


@dataclass
class GaussianDensityConfig:
    type: str = "gaussian_density"
    features: int = MISSING
    min_scale: float = 0.05


@dataclass
class GANModelConfig:
    type: str = "gan"
    features: int = MISSING
    classes: int = MISSING
    latent_dim: int = 16
    hidden: list[int] = field(default_factory=lambda: [128])
    activation: str = "relu"


@dataclass
class MaskedAutoencoderConfig:
    type: str = "masked_autoencoder"
    in_features: int = MISSING
    hidden: list[int] = field(default_factory=lambda: [128])
    embedding: int = 64
    activation: str = "relu"


@dataclass
class PredictorConfig:
    type: str = "predictor"
    in_features: int = MISSING
    out_features: int = MISSING
    hidden: list[int] = field(default_factory=lambda: [128])  # the encoder's; must match the saved encoder
    embedding: int = 64
    activation: str = "relu"
    encoder: Optional[str] = None  # a stage-1 encoder.pt; null: a fresh encoder (training from scratch)
    freeze_base: bool = False


@dataclass
class MLPConfig:
    type: str = "mlp"
    in_features: int = MISSING
    out_features: int = MISSING
    hidden: list[int] = field(default_factory=lambda: [128])
    activation: str = "relu"
    dropout: float = 0.0
    checkpointing: bool = False  # gradient checkpointing: recompute each hidden block in backward


@dataclass
class LightGBMConfig:
    type: str = "lightgbm"
    num_leaves: int = 31
    learning_rate: float = 0.05
    min_data_in_leaf: int = 20
    feature_fraction: float = 1.0
    lambda_l2: float = 0.0
    max_depth: int = -1
    num_threads: int = 0
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)  # any other LightGBM parameter, by its LightGBM name


@dataclass
class DataConfig:
    type: str = MISSING
    batch_size: int = 64
    val_fraction: float = 0.2
    num_workers: int = 0
    train_samples: Optional[int] = None  # keep only this many training samples (null: all)
    in_features: int = MISSING  # facts of the data set, read by model configs
    out_features: int = MISSING


# paradigm ------------------------------------------------------------------------------------
@dataclass
class SupervisedConfig:
    type: str = "supervised"


@dataclass
class PretrainConfig:
    type: str = "pretrain"
    save_to: str = "encoder.pt"  # relative paths are under the run directory


@dataclass
class GANParadigmConfig:
    type: str = "gan"
    critic_steps: int = 2            # critic updates per generator update
    loss: str = "logistic"           # logistic (non-saturating) or wasserstein_gp
    gp_weight: float = 10.0          # gradient-penalty weight (wasserstein_gp only)
    generator_lr: Optional[float] = None  # null: optimizer.lr
    critic_lr: Optional[float] = None     # null: optimizer.lr
    stage: bool = True               # run the classification stage first, and again when the trigger fires
    stage_epochs: int = 3
    goal: float = 0.9                # the classifier's val/accuracy goal ...
    tolerance: float = 0.05          # ... the stage re-runs when accuracy < goal - tolerance


@dataclass
class GBDTParadigmConfig:
    type: str = "gbdt"


# root ----------------------------------------------------------------------------------------
@dataclass
class LogConfig:
    format: str = "auto"  # auto: human-readable on a terminal, JSON otherwise
    level: str = "info"


@dataclass
class TrainConfig:
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
    # Staged training's stage-2 keys, at the root so the command reads
    # `experiment=finetune encoder=<path> freeze_base=true`; model=predictor reads them.
    encoder: Optional[str] = None
    freeze_base: bool = False


PROGRESS = ("auto", "always", "never")
MULTI_SELECT = ("sink",)  # groups whose options are combined (sink=[a,b]) rather than one chosen

SCHEMAS: dict[str, dict[str, type]] = {
    "lr": {"warmup_cosine": WarmupCosineConfig, "constant": ConstantLRConfig,
           "cosine_restarts": CosineRestartsConfig, "plateau": PlateauConfig},
    "stopping": {"patience": PatienceConfig, "none": NoStoppingConfig},
    "gradient": {"norm_clip": NormClipConfig, "value_clip": ValueClipConfig, "none": NoClipConfig},
    "sink": {"wandb": WandbSinkConfig, "tensorboard": TensorBoardSinkConfig, "mlflow": MLflowSinkConfig},
    "optimizer": {"adamw": AdamWConfig, "adam": AdamConfig, "sgd": SGDConfig},
    "objective": {"classification": ClassificationConfig, "regression": RegressionConfig,
                  "masked_reconstruction": MaskedReconstructionConfig, "nll": NLLConfig,
                  "adversarial": AdversarialConfig, "gan": GANEvaluationConfig},
    "model": {"mlp": MLPConfig, "masked_autoencoder": MaskedAutoencoderConfig, "predictor": PredictorConfig,
              "gaussian_density": GaussianDensityConfig, "gan": GANModelConfig, "lightgbm": LightGBMConfig},
    "data": {"digits": DataConfig, "diabetes": DataConfig},
    "paradigm": {"supervised": SupervisedConfig, "pretrain": PretrainConfig, "gan": GANParadigmConfig,
                 "gbdt": GBDTParadigmConfig},
}
# Groups nested inside an option of a slot's group: their options are schemas too, but no slot selects on them.
SUBGROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "objective/loss": {"mse": MSELossConfig, "mae": MAELossConfig, "huber": HuberLossConfig,
                       "mape": MAPELossConfig, "physics_informed": PhysicsInformedLossConfig},
}
SUBGROUPS = tuple(SUBGROUP_SCHEMAS)


def register_schemas() -> None:
    """Stores every schema in Hydra's ConfigStore under ``schema/<group>/<option>``. Idempotent."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, options in {**SCHEMAS, **SUBGROUP_SCHEMAS}.items():
        for option, schema in options.items():
            store.store(group=f"schema/{group}", name=option, node=schema)


def options(group: str) -> list[str]:
    """The packaged options of ``group`` (the YAML files in ``configs/<group>/``)."""
    folder = resources.files(CONFIG_MODULE).joinpath(*group.split("/"))
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


# experiment/ holds `# @package _global_` presets that pick options of the groups above.
CHOICE_GROUPS = (*GROUPS, *SUBGROUPS, "experiment")
_DOTTED_SUBGROUPS = {group.replace("/", "."): group for group in SUBGROUPS}


# W&B is the common tracker: its keys may be written at the sink level, as the foundation named them.
_WANDB_SHORTHANDS = {f"sink.{key}" for key in ("project", "entity", "name", "mode", "tags", "dir")}


def check_choices(overrides: list[str]) -> list[str]:
    """Checks that each override that picks a group option names one that exists; returns them ready for Hydra.

    Hydra would fail too, but over several lines; this names the key, the value and the
    choices in one. ``sink=null`` is quoted on the way, because Hydra reads a bare null as "no
    option" for a group. A multi-select group takes a list: ``sink=[wandb,tensorboard]``.
    ``sink.project``, ``sink.entity``, ``sink.name``, ``sink.mode``, ``sink.tags`` and ``sink.dir``
    are short for the W&B sink's ``sink.wandb.*`` keys.
    """
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

    For services and tests; the CLI composes the same tree through ``@hydra.main``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    overrides = check_choices(list(overrides or []))
    register_schemas()
    # The context saves Hydra's global state and puts it back, so a caller's own Hydra app is undisturbed.
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)
