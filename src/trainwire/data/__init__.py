"""Data: the data contract, resumable loaders, and the bundled datasets.

The data contract: whatever fills the ``data`` slot (a built-in option, or the user's own
``data._target_=mylab.make_loaders``) returns one of

- a ``(train, val)`` pair or a ``(train, val, test)`` triple, ``val`` and ``test`` may be None:
  each a ``DataLoader`` (or any sized iterable of batches) or a map-style ``Dataset``. The test
  split is read once, when training finishes, to score the best weights (``test/<metric>``), and
  by ``trainwire evaluate`` (ADR 0034);
- a ``Loaders``;
- a single ``DataLoader`` or ``Dataset``: training data without validation.

A map-style ``Dataset`` gets trainwire's own loaders (``as_loaders``): a ``ResumableSampler``
(shuffled from the seed, resumable mid-epoch, sharded by rank) with ``data.batch_size`` per
process, ``data.num_workers`` and, with workers, ``data.timeout_s`` (a worker that delivers no
batch in that long ends the run with one line rather than hanging it), and ``ShardBatches`` for
validation. A target whose
signature names ``seed``, ``rank``, ``world_size`` or ``batch_size`` receives them. A user's own
``DataLoader`` is used as it is (its own ``timeout`` too: trainwire sets none on it), and if its order cannot be restored (shuffled without a
``ResumableSampler``), the Trainer says so once (``not_resumable``), as a warning at the start and
a note in ``summary.json``. Anything else is one ConfigError line naming ``data``, the target and
what it returned.

Both bundled sets ship inside the package (``trainwire/datasets``), so nothing is downloaded at
run time: the UCI 8×8 handwritten digits (1,797 images, 10 classes) for classification and the
diabetes progression set (442 patients, 10 features) for regression.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any, NamedTuple

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    Sampler,
    SequentialSampler,
    TensorDataset,
)

from trainwire import logs
from trainwire.errors import ConfigError


class Loaders(NamedTuple):
    train: DataLoader
    val: DataLoader | None
    test: DataLoader | None = None  # held out: scored once, with the best weights, when training finishes


class ResumableSampler(Sampler[list[int]]):
    """Batches of indices, shuffled afresh each epoch from ``seed + epoch``; can start mid-epoch.

    The order of an epoch depends only on the seed and the epoch, never on how many epochs
    this process has run, so a resumed run sees the same batches. ``set_epoch(epoch, start)``
    makes the next pass begin at batch ``start`` without loading the batches before it.
    ``len`` is always the full epoch's batch count (what the schedule is planned on).
    ``generator``, when given, is the DataLoader's own: it is reseeded per epoch too, so the
    seeds handed to worker processes also follow the epoch.

    With ``world_size`` processes, ``batch_size`` is per process: the epoch is cut into global
    batches of ``batch_size * world_size`` and process ``rank`` takes the ``rank``-th slice of
    each. So N processes at batch B see, together, exactly the batches one process sees at
    batch N·B (the last, short, batch split as evenly as it goes; padded from the epoch's start
    when it has fewer samples than processes, so that no process gets an empty batch).
    """

    def __init__(self, size: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 generator: torch.Generator | None = None, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.generator = generator
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Called by the Trainer before each epoch's pass; ``start`` batches of it are skipped."""
        self.epoch, self.start = epoch, start
        if self.generator is not None:
            self.generator.manual_seed(self.seed + epoch + 1)  # not the order's own seed

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        # Only the index list is built for the skipped batches; no sample is loaded for them.
        step = self.batch_size * self.world_size
        for first in range(self.start * step, self.size, step):
            batch = order[first : first + step]
            if len(batch) < self.world_size:
                batch = torch.cat([batch, order[: self.world_size - len(batch)]])
            yield batch.tensor_split(self.world_size)[self.rank].tolist()

    def __len__(self) -> int:
        return -(-self.size // (self.batch_size * self.world_size))

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = state["seed"]


class ShardBatches(Sampler[list[int]]):
    """Validation batches of this process's share (every ``world_size``-th sample from ``rank``), in order.

    Every process gets the same number of batches (a sharded model's forward pass is a
    collective), and no sample is seen twice, so sums reduced over processes cover the set once.
    """

    def __init__(self, size: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> None:
        if size < world_size:
            raise ConfigError(f"the validation set has {size} samples, fewer than the {world_size} processes")
        self.shard = torch.arange(rank, size, world_size)
        largest = -(-size // world_size)
        self.count = -(-largest // batch_size)
        self.batch_size = batch_size
        if len(self.shard) < self.count:
            raise ConfigError(f"validation batches of {batch_size} cannot be split evenly over {world_size} processes")

    def __iter__(self) -> Iterator[list[int]]:
        if -(-len(self.shard) // self.batch_size) == self.count:
            chunks = self.shard.split(self.batch_size)
        else:  # a shard one sample short of the others: as many batches, a little smaller
            chunks = self.shard.tensor_split(self.count)
        return iter([chunk.tolist() for chunk in chunks])

    def __len__(self) -> int:
        return self.count


def resumable_sampler(data: Any) -> ResumableSampler | None:
    """The ResumableSampler behind a DataLoader, if it has one."""
    sampler = getattr(data, "batch_sampler", None)
    return sampler if isinstance(sampler, ResumableSampler) else None


def epoch_batches(data: Iterable[Any], epoch: int, start: int = 0) -> Iterator[Any]:
    """The batches of ``epoch`` from batch ``start`` on.

    A DataLoader over a ResumableSampler skips by index, loading nothing it skips; a list is
    sliced; any other iterable is read past its first ``start`` batches (exact only when its
    order does not depend on how often it was iterated before).
    """
    sampler = resumable_sampler(data)
    if sampler is not None:
        sampler.set_epoch(epoch, start)
        return iter(data)
    if isinstance(data, Sequence):
        return iter(data[start:]) if start else iter(data)
    return itertools.islice(data, start, None)


def not_resumable(data: Any) -> str | None:
    """Why resuming mid-run would not see the batches an uninterrupted run sees, or None when it would.

    Exact: a DataLoader over a ``ResumableSampler``, a list, or a DataLoader reading a map-style
    dataset in order. Anything else (a shuffled DataLoader, an iterable dataset) is not.
    """
    if resumable_sampler(data) is not None or isinstance(data, Sequence):
        return None
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            return "the training DataLoader reads an IterableDataset, whose position cannot be restored"
        if isinstance(data.sampler, SequentialSampler) and getattr(data.batch_sampler, "sampler", None) is data.sampler:
            return None
        return (f"the training DataLoader draws its order from a {type(data.sampler).__name__}, which cannot be "
                "restored: a resumed run sees other batches (return Datasets, or use trainwire.data.ResumableSampler)")
    return f"the training data ({type(data).__name__}) cannot be rewound to a batch: a resumed run may see other batches"


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(type(item).__name__ for item in value)})"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '…' if len(text) > 60 else text}"


def _own(seed: int) -> torch.Generator:
    """A validation loader's own generator. Without one, each ``iter(loader)`` draws its base seed from the
    global torch generator, which moves it under another run in another thread while that run seeds
    it and builds its model (``trainwire.runtime.process.SEEDING``): that run's weights then differ (issue 25)."""
    return torch.Generator().manual_seed(seed)


def _batches(part: Any, *, train: bool, batch_size: int, num_workers: int, timeout_s: float, seed: int, rank: int,
             world_size: int) -> Any:
    """Loaders for a map-style Dataset; anything iterable with a length is taken as batches already."""
    if isinstance(part, Dataset) and not isinstance(part, IterableDataset) and hasattr(part, "__len__"):
        if train:
            generator = torch.Generator().manual_seed(seed)
            sampler = ResumableSampler(len(part), batch_size, seed=seed, generator=generator, rank=rank,
                                       world_size=world_size)
            return DataLoader(part, batch_sampler=sampler, generator=generator, **_workers(num_workers, timeout_s))
        shard = ShardBatches(len(part), batch_size * 4, rank=rank, world_size=world_size)
        return DataLoader(part, batch_sampler=shard, generator=_own(seed), **_workers(num_workers, timeout_s))
    if (isinstance(part, Iterable) and hasattr(part, "__len__")
            and not isinstance(part, (str, bytes, Mapping, torch.Tensor))):  # a tensor's rows are not batches
        return part
    return None


MAX_WORKERS = 256
TIMEOUT_S = 300.0  # long enough for a slow batch, short enough that a stuck worker is found the same hour


def _workers(num_workers: int, timeout_s: float) -> dict[str, Any]:
    """The DataLoader's worker arguments: torch refuses a timeout without workers (the main process reads)."""
    return {"num_workers": num_workers, **({"timeout": float(timeout_s)} if num_workers else {})}


def check_timeout(timeout_s: Any) -> None:
    """Refuses a ``data.timeout_s`` that is not a positive, finite number of seconds (never is not an option)."""
    if (type(timeout_s) not in (int, float) or not 0 < timeout_s < float("inf")):
        raise ConfigError(f"data.timeout_s={timeout_s!r} must be a number of seconds > 0 (how long a DataLoader "
                          "worker may take to deliver a batch before the run stops with an error)")


def check_workers(num_workers: Any) -> None:
    """Refuses a ``data.num_workers`` that is negative or more processes than any machine here would start."""
    if type(num_workers) is not int or not 0 <= num_workers <= MAX_WORKERS:
        raise ConfigError(f"data.num_workers={num_workers!r} must be an integer in [0, {MAX_WORKERS}]")


def as_loaders(returned: Any, node: Mapping[str, Any] | None = None, *, seed: int = 0, rank: int = 0,
               world_size: int = 1) -> Loaders:
    """What a data option returned, as ``Loaders``, by the data contract (see this module's docstring).

    ``node`` is the ``data`` config node: its ``batch_size`` and ``num_workers`` build the loaders of
    Datasets, and its ``_target_`` or ``type`` names the source in errors.
    """
    node = dict(node or {})
    source = node.get("_target_") or node.get("type") or "?"
    batch_size, num_workers = node.get("batch_size", 64), node.get("num_workers", 0)
    timeout_s = node.get("timeout_s", TIMEOUT_S)
    if isinstance(returned, Loaders):
        return returned
    parts = tuple(returned) if isinstance(returned, (tuple, list)) else (returned, None)
    parts = parts + (None,) * (3 - len(parts)) if len(parts) in (2, 3) else (None, None, None)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"data.batch_size={batch_size!r} must be an integer >= 1")
    check_workers(num_workers)
    check_timeout(timeout_s)
    built = [None if part is None and index > 0 else
             _batches(part, train=index == 0, batch_size=batch_size, num_workers=num_workers, timeout_s=timeout_s,
                      seed=seed, rank=rank,
                      world_size=world_size)
             for index, part in enumerate(parts)]
    if built[0] is None or any(part is not None and done is None for part, done in zip(parts, built)):
        raise ConfigError(
            f"data={source} returned {_describe(returned)}; a data target returns (train, val) or (train, val, test) "
            "(val and test may be None), a trainwire.data.Loaders, or map-style Datasets, each a DataLoader, a sized "
            "iterable of batches or a Dataset")
    return Loaders(*built)


def _load(name: str) -> dict[str, torch.Tensor]:
    with resources.files("trainwire.data.datasets").joinpath(f"{name}.pt").open("rb") as handle:
        return torch.load(handle, weights_only=True)


def _split(n: int, val_fraction: float, seed: int, test_fraction: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Train, validation and test indices: one shuffle from ``seed``, validation first, then test, then train.

    With ``test_fraction=0`` the train and validation splits are those of a set without a test split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={val_fraction} must be in [0, 1)")
    if type(test_fraction) not in (int, float) or not 0.0 <= test_fraction < 1.0 - val_fraction:
        raise ConfigError(f"data.test_fraction={test_fraction!r} must be in [0, 1 - data.val_fraction) "
                          f"(data.val_fraction={val_fraction}): the rest trains")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


def _loaders(x: torch.Tensor, y: torch.Tensor, val_idx: torch.Tensor, train_idx: torch.Tensor,
             batch_size: int, seed: int, num_workers: int, timeout_s: float, train_samples: int | None = None,
             rank: int = 0, world_size: int = 1, test_idx: torch.Tensor | None = None) -> Loaders:
    if batch_size < 1:
        raise ConfigError(f"data.batch_size={batch_size} must be >= 1")
    check_workers(num_workers)
    check_timeout(timeout_s)
    if train_samples is not None:
        if not 1 <= train_samples <= len(train_idx):
            raise ConfigError(f"data.train_samples={train_samples} must be in [1, {len(train_idx)}] (the training split)")
        train_idx = train_idx[:train_samples]  # the split is already shuffled: a random subset, the same for a seed
    generator = torch.Generator().manual_seed(seed)
    sampler = ResumableSampler(len(train_idx), batch_size, seed=seed, generator=generator, rank=rank,
                               world_size=world_size)
    train = DataLoader(TensorDataset(x[train_idx], y[train_idx]), batch_sampler=sampler, generator=generator,
                       **_workers(num_workers, timeout_s))
    held_out = []
    for indices in (val_idx, test_idx):
        loader = None
        if indices is not None and len(indices):
            shard = ShardBatches(len(indices), batch_size * 4, rank=rank, world_size=world_size)
            loader = DataLoader(TensorDataset(x[indices], y[indices]), batch_sampler=shard, generator=_own(seed),
                                **_workers(num_workers, timeout_s))
        held_out.append(loader)
    return Loaders(train, *held_out)


def _check_shape(name: str, in_features: int, out_features: int, inputs: int, outputs: int) -> None:
    for key, given, actual in (("in_features", in_features, inputs), ("out_features", out_features, outputs)):
        if given != actual:
            raise ConfigError(f"data.{key}={given!r}: data={name} has {actual}")


def digits(batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0,
           train_samples: int | None = None, in_features: int = 64, out_features: int = 10,
           timeout_s: float = TIMEOUT_S, test_fraction: float = 0.0, *, rank: int = 0, world_size: int = 1) -> Loaders:
    """8×8 digits as 64 features scaled to [0, 1]; targets are class indices 0–9.

    ``train_samples`` keeps only that many training samples (e.g. a small labelled subset); the
    validation split is unchanged. ``test_fraction`` holds that share out as a test split, scored once
    with the best weights when training finishes (0: none; the other splits are then as without it). ``timeout_s`` is how long a worker (``num_workers`` > 0) may take to
    deliver a batch before the run stops with one line (a stuck worker would hang it). ``rank``/``world_size`` shard both loaders for distributed
    training; ``batch_size`` is per process. ``in_features`` and ``out_features`` state the
    set's shape for the model's config to read (``${data.in_features}``); other values are refused.
    """
    _check_shape("digits", in_features, out_features, 64, 10)
    raw = _load("digits")
    x, y = raw["x"].float() / 16.0, raw["y"].long()
    train_idx, val_idx, test_idx = _split(len(x), val_fraction, seed, test_fraction)
    return _loaders(x, y, val_idx, train_idx, batch_size, seed, num_workers, timeout_s, train_samples, rank, world_size,
                    test_idx)


def diabetes(batch_size: int = 32, val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0,
             train_samples: int | None = None, in_features: int = 10, out_features: int = 1,
             timeout_s: float = TIMEOUT_S, test_fraction: float = 0.0, *, rank: int = 0,
             world_size: int = 1) -> Loaders:
    """Diabetes progression: 10 features and the target, standardised with the training split's statistics.

    The metrics are therefore in standardised units: ``val/rmse`` and ``val/mae`` in standard
    deviations of the target (multiply by the ``std`` logged at the start for the original
    units), and ``val/mape`` relative to standardised targets, many near zero, so it reads
    large (4.96 is 496 %) and says little here; ``val/r2`` is the same in either unit.
    ``in_features`` and ``out_features`` state the shape, and ``test_fraction`` a test split, as for ``digits``.
    """
    _check_shape("diabetes", in_features, out_features, 10, 1)
    raw = _load("diabetes")
    x, y = raw["x"], raw["y"]
    train_idx, val_idx, test_idx = _split(len(x), val_fraction, seed, test_fraction)
    x_mean, x_std = x[train_idx].mean(0), x[train_idx].std(0)
    y_mean, y_std = y[train_idx].mean(), y[train_idx].std()
    x, y = (x - x_mean) / x_std, ((y - y_mean) / y_std).unsqueeze(-1)
    logs.get_logger().info("targets_standardised", data="diabetes", mean=round(y_mean.item(), 3),
                           std=round(y_std.item(), 3),
                           note="val/rmse and val/mae are in target standard deviations (times std: original units); "
                                "val/mape is relative to standardised targets near 0")
    return _loaders(x, y, val_idx, train_idx, batch_size, seed, num_workers, timeout_s, train_samples, rank, world_size,
                    test_idx)
