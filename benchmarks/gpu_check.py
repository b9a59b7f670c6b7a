"""The GPU claims of the README, measured in one run: mixed precision, host syncs, compile, checkpoints, MFU.

    python benchmarks/gpu_check.py                      # on a CUDA machine: under 6 minutes, one table
    python benchmarks/gpu_check.py --out benchmarks/results-gpu.md
    python benchmarks/gpu_check.py --dry-run            # tiny sizes on the CPU in seconds: checks the script

One GPT-style model (pre-LayerNorm blocks, causal ``scaled_dot_product_attention``, GELU MLP,
untied head; 6 layers, width 384, 6 heads, vocabulary 8192, sequence 256, batch 32) is trained
from the same initial weights on the same pre-built batches (CPU tensors, pinned on CUDA, moved
with ``non_blocking=True``) by a hand-written loop and by ``trainwire.Trainer``: AdamW
(lr 3e-4, weight decay 0.1), gradients clipped to norm 1.0, a constant lr, the loss, lr and grad
norm read every 50 steps and written to ``metrics.jsonl``, the epoch's mean loss read once an
epoch. trainwire runs as a user would build it (``NormClipper(1.0)``, a ``JsonlSink``, its
defaults otherwise: the non-finite guard, the gradient monitor); where the guard's per-step
read matters, the row also shows ``nonfinite=off``.

Rows:

1. bf16 autocast, steps/s of each loop, interleaved round by round (order alternating); ratio
   = median of per-round trainwire / hand-written (target >= 0.98).
2. fp16 autocast with a grad scaler (trainwire: ``trainer.precision=16``), the same ratio, and
   the steps each skipped (the scaler lowered its scale).
3. Host syncs: ``torch.cuda.set_sync_debug_mode("error")`` armed on every step that logs
   nothing (``trainer.log_every_n_steps=50``); a sync raises, and the trainwire frame that
   caused it is named. Then a pass in ``"warn"`` mode names every sync of the run (logging
   steps and epoch ends included), for ``nonfinite=off`` and for the default guard.
4. ``trainer.compile=true`` against the hand-written loop with ``torch.compile(model)``.
5. The loop stall of a checkpoint (``LocalCheckpointStore`` through ``checkpoint_every_n_steps``;
   asynchronous when ``TrainerSettings`` has an ``async_checkpoint`` field) against a bare
   ``torch.save`` of the model and optimizer state from GPU memory.
6. MFU as trainwire reports it (``time/mfu`` of the second epoch of row 1's runs), its TFLOP/s
   against the A100 and H100/H200 peaks of ``trainwire.runtime.throughput``, and its FLOP count against
   the analytic ``6N + 12·L·T·C`` per token.

steps/s is timed from the end of batch ``warmup`` to the end of the last batch, with a
``torch.cuda.synchronize()`` at both ends (the FLOP-counting first step, compilation and cuBLAS
warm-up fall before it). Every row runs under a time budget (``--budget-s``); a row that
fails prints its error in its cell and the script goes on, then exits 1. Progress goes to
stderr, the report to stdout (and to ``--out``). ``--dry-run`` shrinks every size and runs on
the CPU: CUDA-only parts are "skipped: no CUDA", fp16 falls back to fp32 as trainwire does,
row 3's harness runs with a stand-in for the sync-debug mode (a dispatch mode that flags host
reads such as ``.item()``), and compile uses Dynamo's eager backend (Inductor on a CPU takes
minutes). A benchmark, not a test: targets missed still exit 0.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
SYNC_MESSAGE = "called a synchronizing CUDA operation"
TARGET_RATIO = 0.98


@dataclasses.dataclass(frozen=True)
class Sizes:
    layers: int
    width: int
    heads: int
    seq: int
    batch: int
    vocab: int
    batches: int  # per epoch, rows 1, 2 and 4
    epochs: int
    warmup: int  # batches run before the clock starts
    rounds: int
    compile_rounds: int
    log_every: int
    sync_batches: int  # row 3: one epoch
    checkpoint_batches: int  # row 5: one epoch ...
    checkpoint_every: int  # ... with last.pt every this many steps
    checkpoint_rounds: int


FULL = Sizes(layers=6, width=384, heads=6, seq=256, batch=32, vocab=8192, batches=100, epochs=2, warmup=10, rounds=3,
             compile_rounds=2, log_every=50, sync_batches=120, checkpoint_batches=110, checkpoint_every=25,
             checkpoint_rounds=2)
DRY = Sizes(layers=2, width=32, heads=2, seq=16, batch=4, vocab=64, batches=6, epochs=2, warmup=2, rounds=1,
            compile_rounds=1, log_every=3, sync_batches=8, checkpoint_batches=8, checkpoint_every=3,
            checkpoint_rounds=1)


def say(message: str) -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {message}", file=sys.stderr, flush=True)


START = time.monotonic()
BUDGET = [330.0]  # seconds from START after which no row or round starts (--budget-s)


# -- the model and the data -----------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.qkv, self.proj = nn.LayerNorm(width), nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.ln2, self.fc, self.out = nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (part.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for part in self.qkv(self.ln1(x)).split(c, dim=2))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """Token ids [B, T] -> logits [B, T, vocab]."""

    def __init__(self, s: Sizes) -> None:
        super().__init__()
        self.embed, self.position = nn.Embedding(s.vocab, s.width), nn.Embedding(s.seq, s.width)
        self.blocks = nn.ModuleList(Block(s.width, s.heads) for _ in range(s.layers))
        self.norm, self.head = nn.LayerNorm(s.width), nn.Linear(s.width, s.vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.position(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def analytic_flops_per_token(s: Sizes) -> float:
    """Training FLOPs per token: 6 per weight of every matrix multiply, plus 12·L·T·C for attention (non-causal)."""
    matmul_weights = s.layers * 12 * s.width**2 + s.width * s.vocab
    return 6 * matmul_weights + 12 * s.layers * s.seq * s.width


@dataclasses.dataclass
class Work:
    """What every run shares: sizes, device, the initial weights and the batches."""

    sizes: Sizes
    device: torch.device
    initial: dict[str, torch.Tensor]
    batches: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def model(self) -> nn.Module:
        model = GPT(self.sizes)
        model.load_state_dict(self.initial)
        return model.to(self.device)  # before fit, so fit's own move is a no-op (and syncs nothing in row 3)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def make_work(s: Sizes, device: torch.device) -> Work:
    torch.manual_seed(0)
    initial = {key: value.clone() for key, value in GPT(s).state_dict().items()}
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(max(s.batches, s.sync_batches, s.checkpoint_batches)):
        tokens = torch.randint(0, s.vocab, (s.batch, s.seq + 1), generator=g)
        x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        batches.append((x.pin_memory(), y.pin_memory()) if device.type == "cuda" else (x, y))
    return Work(s, device, initial, batches)


def optimizer_factory() -> Callable[..., torch.optim.Optimizer]:
    return functools.partial(torch.optim.AdamW, lr=3e-4, weight_decay=0.1)


# -- timing ---------------------------------------------------------------------------------------
class Clock:
    """Called after every batch: the time of each, and a synchronised start and end of the timed window."""

    def __init__(self, work: Work, total: int, timed: bool = True) -> None:
        self.work, self.total, self.warmup, self.timed = work, total, work.sizes.warmup, timed
        self.ticks: list[float] = []
        self.began = time.perf_counter()
        self.start = self.end = math.nan

    def tick(self) -> None:
        n = len(self.ticks) + 1
        if self.timed and (n == self.warmup or n == self.total):
            self.work.sync()
        now = time.perf_counter()
        self.ticks.append(now)
        if n == self.warmup:
            self.start = now
        if n == self.total:
            self.end = now

    @property
    def steps_per_s(self) -> float:
        return (self.total - self.warmup) / (self.end - self.start)

    @property
    def warmup_s(self) -> float:
        """From building the run to the end of batch ``warmup``: start-up, and compilation when compiled."""
        return self.start - self.began

    # on_batch_end, so that the clock is a trainwire hook too
    def on_batch_end(self, state: Any, loss: Any) -> None:
        self.tick()


@dataclasses.dataclass
class Run:
    steps_per_s: float
    warmup_s: float
    skipped: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    ticks: list[float] = dataclasses.field(default_factory=list)
    checkpoint_bytes: int = 0


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16":
        return torch.bfloat16
    if precision == "16" and device.type == "cuda":
        return torch.float16
    return None  # fp16 without CUDA: fp32, as trainwire falls back


def hand_written(work: Work, precision: str, *, compile: bool = False, batches: int | None = None,
                 epochs: int | None = None) -> Run:
    """The loop a competent engineer writes for the same job."""
    s, device = work.sizes, work.device
    data = work.batches[:batches or s.batches]
    epochs = epochs or s.epochs
    clock = Clock(work, len(data) * epochs)
    model = work.model()
    module = torch.compile(model) if compile else model
    optimizer = optimizer_factory()(model.parameters())
    dtype = _autocast_dtype(precision, device)
    scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
    skipped = step = 0
    losses: list[torch.Tensor] = []
    with tempfile.TemporaryDirectory() as folder, open(Path(folder) / "metrics.jsonl", "w") as record:
        model.train()
        for epoch in range(epochs):
            for x, y in data:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    loss = lm_loss(module(x), y)
                if scaler is None:
                    loss.backward()
                    norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
                    scale = scaler.get_scale()
                    scaler.step(optimizer)
                    scaler.update()
                    skipped += scaler.get_scale() < scale  # the scaler lowers its scale exactly when it skipped
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.detach())
                step += 1
                if step % s.log_every == 0:
                    lr = optimizer.param_groups[0]["lr"]
                    record.write(json.dumps({"step": step, "loss": loss.item(), "lr": lr, "grad_norm": norm.item()}) + "\n")
                    record.flush()
                clock.tick()
            record.write(json.dumps({"epoch": epoch, "loss": torch.stack(losses).mean().item()}) + "\n")
            losses.clear()
    return Run(clock.steps_per_s, clock.warmup_s, skipped=skipped, ticks=clock.ticks)


def _next_token():
    from trainwire.policies.objectives import Objective

    class NextToken(Objective):
        """Cross-entropy of a model that returns logits [B, T, vocab] for (ids, next ids) batches."""

        def training_loss(self, model, batch):
            ids, targets = batch
            return lm_loss(model(ids), targets)

        def evaluate(self, model, batches, reduce=None):
            losses = [lm_loss(model(ids), targets) for ids, targets in batches]
            return {"loss": torch.stack(losses).mean().item()}

    return NextToken()


def checkpoint_mode() -> tuple[dict[str, Any], str]:
    """The ``TrainerSettings`` overrides that turn asynchronous checkpoints on (when the field exists) and the mode, in words."""
    from trainwire import TrainerSettings

    fields = {field.name for field in dataclasses.fields(TrainerSettings)}
    if "async_checkpoint" not in fields:
        return {}, "synchronous (TrainerSettings has no async_checkpoint field)"
    default = TrainerSettings().async_checkpoint
    if isinstance(default, bool):
        return {"async_checkpoint": True}, "async_checkpoint=True"
    return {}, f"async_checkpoint={default!r} (its default; not a bool, so left as it is)"


def trainwire_run(work: Work, precision: str, *, nonfinite: str = "skip", compile: bool = False,
                  batches: int | None = None, epochs: int | None = None, checkpoint_every: int | None = None,
                  data: Any = None, timed: bool = True, settings: dict[str, Any] | None = None) -> Run:
    """``trainwire.Trainer.fit`` on the same work; a ``LocalCheckpointStore`` when ``checkpoint_every`` is given."""
    from trainwire import (
        Cadence,
        JsonlSink,
        LocalCheckpointStore,
        NormClipper,
        Trainer,
        TrainerSettings,
        registry,
    )

    s = work.sizes
    items = work.batches[:batches or s.batches]
    epochs = epochs or s.epochs
    clock = Clock(work, len(items) * epochs, timed)  # untimed in row 3: its synchronize must not count as the loop's
    model = work.model()
    with tempfile.TemporaryDirectory() as folder:
        store = LocalCheckpointStore(Path(folder) / "checkpoints") if checkpoint_every else None
        trainer = Trainer(
            objective=_next_token(), optimizer=optimizer_factory(), gradient_policy=NormClipper(1.0),
            settings=TrainerSettings(max_epochs=epochs, precision=precision, log_every_n_steps=s.log_every,
                                     device=work.device.type, compile=compile, **(settings or {})),
            nonfinite=registry.build("nonfinite", {"type": nonfinite}), checkpoint_policy=Cadence(every_n_steps=checkpoint_every),
            sink=JsonlSink(folder), checkpoints=store, hooks=[clock])
        try:
            result = trainer.fit(model, data if data is not None else items)
        finally:
            if store is not None:
                store.close()
        size = store.path("last").stat().st_size if store is not None and store.path("last").exists() else 0
    return Run(clock.steps_per_s, clock.warmup_s, skipped=int(result.history[-1]["train/skipped_steps"]),
               history=result.history, counts=result.counts, ticks=clock.ticks, checkpoint_bytes=size)


def settle() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def interleaved(runners: dict[str, Callable[[], Run]], rounds: int, label: str, notes: list[str]) -> dict[str, list[Run]]:
    """Each runner once a round, the order rotated round by round."""
    names, runs = list(runners), {name: [] for name in runners}
    for index in range(rounds):
        if index and time.monotonic() - START > BUDGET[0]:
            notes.append(f"{label}: stopped after {index} of {rounds} rounds, the time budget being spent")
            break
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            say(f"{label}: round {index + 1}/{rounds}, {name}")
            runs[name].append(runners[name]())
            settle()
        notes.append(f"{label}, round {index + 1}: " + ", ".join(
            f"{name} {runs[name][-1].steps_per_s:,.1f} steps/s (warm-up {runs[name][-1].warmup_s:.1f} s)" for name in order))
    return runs


def median_ratio(runs: list[Run], baseline: list[Run]) -> float:
    return statistics.median(a.steps_per_s / b.steps_per_s for a, b in zip(runs, baseline))


def median_sps(runs: list[Run]) -> float:
    return statistics.median(r.steps_per_s for r in runs)


def sps(runs: list[Run]) -> str:
    return f"{median_sps(runs):,.1f}"


def verdict(ratio: float) -> str:
    return "PASS" if ratio >= TARGET_RATIO else "MISS"


# -- the rows -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Row:
    number: int
    check: str
    reference: str = ""
    trainwire: str = ""
    result: str = ""
    target: str = ""


class Report:
    def __init__(self) -> None:
        self.rows: dict[int, Row] = {}
        self.notes: list[str] = []
        self.data: dict[str, Any] = {}  # what a later row reads from an earlier one
        self.failed = False


def row_bf16(work: Work, report: Report) -> Row:
    runs = interleaved({"hand-written": lambda: hand_written(work, "bf16"),
                        "trainwire": lambda: trainwire_run(work, "bf16"),
                        "trainwire nonfinite=off": lambda: trainwire_run(work, "bf16", nonfinite="off")},
                       work.sizes.rounds, "bf16", report.notes)
    report.data["bf16"] = runs
    hand, tw, off = runs["hand-written"], runs["trainwire"], runs["trainwire nonfinite=off"]
    ratio, ratio_off = median_ratio(tw, hand), median_ratio(off, hand)
    return Row(1, "bf16 autocast, steps/s", sps(hand), f"{sps(tw)} (nonfinite=off: {sps(off)})",
               f"ratio {ratio:.3f} (nonfinite=off: {ratio_off:.3f})",
               f"≥ {TARGET_RATIO}: {verdict(ratio)} (nonfinite=off: {verdict(ratio_off)})")


def row_fp16(work: Work, report: Report) -> Row:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = interleaved({"hand-written": lambda: hand_written(work, "16"),
                            "trainwire": lambda: trainwire_run(work, "16")},
                           work.sizes.rounds, "fp16", report.notes)
    hand, tw = runs["hand-written"], runs["trainwire"]
    ratio = median_ratio(tw, hand)
    fallback = "" if work.cuda else " (no CUDA: both ran fp32; trainwire warned: " + next(
        (str(w.message) for w in caught if "precision=16" in str(w.message)), "no warning seen") + ")"
    return Row(2, "fp16 + grad scaler, steps/s; skipped steps",
               f"{sps(hand)}; skipped {[r.skipped for r in hand]}", f"{sps(tw)}; skipped {[r.skipped for r in tw]}",
               f"ratio {ratio:.3f}{fallback}", f"≥ {TARGET_RATIO}: {verdict(ratio)}")


# Row 3: which host syncs a run makes, and on which steps.
class Phases:
    """The batches of one epoch, telling the detector which step of the run is being worked on.

    Everything between yielding batch n and asking for batch n+1 (the move to the device, the
    step, logging, the checkpoint boundary) is step n's; after the last batch comes the epoch end.
    """

    def __init__(self, items: list[Any], log_every: int, detector: Any, arm: Callable[[str], str]) -> None:
        self.items, self.log_every, self.detector, self.arm = items, log_every, detector, arm
        self.step, self.phase = 0, "setup"

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.items:
            self.step += 1
            self._enter("logging step" if self.step % self.log_every == 0 else "step")
            yield batch
        self._enter("epoch end")

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self.detector.set(self.arm(phase))


class CudaSyncs:
    """``torch.cuda.set_sync_debug_mode``."""

    name = "torch.cuda.set_sync_debug_mode"

    def set(self, level: str) -> None:
        torch.cuda.set_sync_debug_mode(level)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")


OPTIMIZERS = os.path.join("torch", "optim", "")


class HostReads:
    """The CPU stand-in for ``set_sync_debug_mode``: flags the ops that read a tensor's value on the host.

    On CUDA these are the syncs a training step is prone to (``.item()``, ``.tolist()``,
    ``bool(t)``); a dispatch mode sees them on any device, so the dry run checks row 3's harness.
    Reads inside ``torch.optim`` are let through: there they read the step counts, which stay on
    the CPU when the parameters are on CUDA (no sync).
    """

    name = "host-read stand-in (dry run)"
    READS = ("aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal")

    def __init__(self) -> None:
        self.level = "default"

    def set(self, level: str) -> None:
        self.level = level

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        from torch.utils._python_dispatch import TorchDispatchMode

        detector = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if (detector.level != "default" and func._schema.name in HostReads.READS
                        and not any(OPTIMIZERS in frame.filename for frame in traceback.extract_stack())):
                    if detector.level == "error":
                        raise RuntimeError(f"{SYNC_MESSAGE} (stand-in: {func._schema.name})")
                    warnings.warn(f"{SYNC_MESSAGE} (stand-in: {func._schema.name})", UserWarning, stacklevel=2)
                return func(*args, **(kwargs or {}))

        try:
            with Mode():
                yield
        finally:
            self.level = "default"


PLUMBING = ("/warnings.py", "/gpu_check.py", "torch/utils/_python_dispatch.py", "torch/utils/flop_counter.py",
            "torch/_ops.py", "torch/_compile.py", "torch/_dynamo/")


def trainwire_frame(frames: list[traceback.FrameSummary]) -> str:
    """The innermost trainwire frame of a stack (and the innermost frame, when that is torch's)."""
    def where(frame: traceback.FrameSummary) -> str:
        parts = Path(frame.filename).parts
        # From the package's folder on (trainwire/policies/gradients.py), else the file and its folder.
        start = len(parts) - 1 - parts[::-1].index("trainwire") if "trainwire" in parts else len(parts) - 2
        short = "/".join(parts[max(start, 0):]) if len(parts) > 1 else frame.filename
        return f"{short}:{frame.lineno} {frame.name}" + (f" `{frame.line.strip()}`" if frame.line else "")

    # The warning machinery, this script's stand-in and torch's dispatch-mode plumbing are how a sync is seen, not where.
    frames = [f for f in frames if not any(part in Path(f.filename).as_posix() for part in PLUMBING)]
    ours = [f for f in frames if "trainwire" in Path(f.filename).parts and "benchmarks" not in Path(f.filename).parts]
    if not ours:
        return "no trainwire frame: " + (where(frames[-1]) if frames else "?")
    inner = frames[-1]
    return where(ours[-1]) + ("" if inner is ours[-1] else f" → {where(inner)}")


def _sync_error(error: BaseException) -> BaseException | None:
    """The sync-debug error in ``error``'s chain (the Trainer's own handling may raise another on top)."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__context__
    return next((e for e in reversed(chain) if SYNC_MESSAGE in str(e)), None)


def sync_pass(work: Work, detector: Any, mode: str, nonfinite: str) -> dict[str, Any]:
    """One trainwire run with the detector armed in ``mode``: ``error`` on non-logging steps only, ``warn`` throughout."""
    s = work.sizes
    arm = (lambda phase: "error" if phase == "step" else "default") if mode == "error" else (lambda phase: "warn")
    data = Phases(work.batches[:s.sync_batches], s.log_every, detector, arm)
    found: collections.Counter[tuple[str, str]] = collections.Counter()
    raised = None

    def record(message, category, filename, lineno, file=None, line=None):
        if SYNC_MESSAGE in str(message):
            found[(data.phase, trainwire_frame(traceback.extract_stack()[:-1]))] += 1
        else:
            original(message, category, filename, lineno, file, line)

    with warnings.catch_warnings(), detector.active():
        warnings.simplefilter("always")
        original, warnings.showwarning = warnings.showwarning, record
        try:
            trainwire_run(work, "bf16", nonfinite=nonfinite, batches=s.sync_batches, epochs=1, data=data, timed=False)
        except RuntimeError as error:
            sync = _sync_error(error)
            if sync is None:
                raise
            raised = (data.step, data.phase, trainwire_frame(traceback.extract_tb(sync.__traceback__)))
    logging_steps = s.sync_batches // s.log_every
    return {"raised": raised, "found": found, "steps": s.sync_batches - logging_steps, "logging_steps": logging_steps}


def _named(found: collections.Counter, phases: tuple[str, ...], limit: int = 3) -> str:
    items = [(count, frame, phase) for (phase, frame), count in found.items() if phase in phases]
    items.sort(key=lambda item: (phases.index(item[2]), -item[0]))
    where = (lambda phase: f" on {phase}s" if phase.endswith("step") else f" at the {phase}") if len(phases) > 1 else (lambda _: "")
    text = "; ".join(f"{count}×{where(phase)} {frame}" for count, frame, phase in items[:limit])
    return text + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def row_syncs(work: Work, report: Report) -> Row:
    detector = CudaSyncs() if work.cuda else HostReads()
    say(f"syncs: error pass (nonfinite=off) with {detector.name}")
    strict = sync_pass(work, detector, "error", "off")
    passes = {}
    for nonfinite in ("off", "skip"):
        say(f"syncs: warn pass, nonfinite={nonfinite}")
        passes[nonfinite] = sync_pass(work, detector, "warn", nonfinite)
    cells = []
    for nonfinite, run in passes.items():
        steps = sum(n for (phase, _), n in run["found"].items() if phase == "step")
        logged = sum(n for (phase, _), n in run["found"].items() if phase == "logging step")
        ends = sum(n for (phase, _), n in run["found"].items() if phase == "epoch end")
        cells.append(f"nonfinite={nonfinite}: {steps} on {run['steps']} non-logging steps"
                     + (f" ({_named(run['found'], ('step',))})" if steps else "")
                     + f", {logged} on {run['logging_steps']} logging steps, {ends} at the epoch end")
        report.notes.append(f"syncs, warn pass, nonfinite={nonfinite}, every site: "
                            + (_named(run["found"], ("step", "logging step", "epoch end"), limit=50) or "none"))
    clean = strict["raised"] is None and not any(p == "step" for p, _ in passes["off"]["found"])
    raised = ("none raised on " + str(strict["steps"]) + " non-logging steps" if strict["raised"] is None
              else "raised at step {} ({}): {}".format(*strict["raised"]))
    row = Row(3, f"host syncs, log_every_n_steps={work.sizes.log_every}", detector.name,
              "error mode, nonfinite=off: " + raised, " / ".join(cells),
              "no sync on non-logging steps (nonfinite=off): " + ("PASS" if clean else "MISS"))
    if not work.cuda:
        row.target = "skipped: no CUDA (" + row.target + " with the stand-in)"
    return row


def row_compile(work: Work, report: Report) -> Row:
    def fresh(run: Callable[[], Run]) -> Callable[[], Run]:
        def compiled() -> Run:
            torch._dynamo.reset()  # each run compiles from scratch (Inductor's on-disk cache still serves)
            return run()
        return compiled

    with eager_backend() if not work.cuda else contextlib.nullcontext():
        runs = interleaved({"hand-written compiled": fresh(lambda: hand_written(work, "bf16", compile=True)),
                            "trainwire compile=true": fresh(lambda: trainwire_run(work, "bf16", compile=True))},
                           work.sizes.compile_rounds, "compile", report.notes)
    hand, tw = runs["hand-written compiled"], runs["trainwire compile=true"]
    ratio = median_ratio(tw, hand)
    eager = report.data.get("bf16")
    speedup = f"; hand-written compiled/eager {median_sps(hand) / median_sps(eager['hand-written']):.2f}×" if eager else ""
    backend = "" if work.cuda else " (dry run: Dynamo's eager backend)"
    return Row(4, "bf16, compiled, steps/s" + backend,
               f"{sps(hand)} (first warm-up {hand[0].warmup_s:.1f} s)",
               f"{sps(tw)} (first warm-up {tw[0].warmup_s:.1f} s; recompiles {[r.counts.get('compile/recompiles') for r in tw]})",
               f"ratio {ratio:.3f}{speedup}", f"≥ {TARGET_RATIO}: {verdict(ratio)}")


@contextlib.contextmanager
def eager_backend() -> Iterator[None]:
    """``torch.compile`` with Dynamo's eager backend, for the dry run only: it traces as on a GPU, without Inductor."""
    original = torch.compile
    torch.compile = functools.partial(original, backend="eager")
    try:
        yield
    finally:
        torch.compile = original


def bare_save(work: Work, folder: Path) -> tuple[float, float, int]:
    """Seconds of ``torch.save`` of the model's and AdamW's state from device memory (median of 3), then with fsync."""
    model = work.model()
    optimizer = optimizer_factory()(model.parameters())
    for x, y in work.batches[:2]:  # AdamW's moments exist after a step
        with torch.autocast(work.device.type, dtype=torch.bfloat16):
            loss = lm_loss(model(x.to(work.device, non_blocking=True)), y.to(work.device, non_blocking=True))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    path = folder / "bare.pt"
    plain, synced = [], []
    for times, durable in ((plain, False), (synced, True)):
        for _ in range(3):
            work.sync()
            began = time.perf_counter()
            with open(path, "wb") as handle:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, handle)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            times.append(time.perf_counter() - began)
    return statistics.median(plain), statistics.median(synced), path.stat().st_size


def row_checkpoint(work: Work, report: Report) -> Row:
    s = work.sizes
    overrides, mode = checkpoint_mode()
    every, n = s.checkpoint_every, s.checkpoint_batches
    # Step s's checkpoint is written after its on_batch_end: inside the window when warmup <= s < n.
    at = [step for step in range(s.warmup, n) if step % every == 0]
    runs = interleaved({"with checkpoints": lambda: trainwire_run(work, "bf16", batches=n, epochs=1, checkpoint_every=every,
                                                                  settings=overrides),
                        "without": lambda: trainwire_run(work, "bf16", batches=n, epochs=1, settings=overrides)},
                       s.checkpoint_rounds, "checkpoint", report.notes)
    per_checkpoint, stalls = [], []
    for with_, without in zip(runs["with checkpoints"], runs["without"]):
        window = (n - s.warmup) / with_.steps_per_s - (n - s.warmup) / without.steps_per_s
        per_checkpoint.append(window / len(at))
        gaps = {step: with_.ticks[step] - with_.ticks[step - 1] for step in range(s.warmup, n)}  # gap after step's tick
        stalls.append(statistics.median(gaps[i] for i in at) - statistics.median(g for i, g in gaps.items() if i not in at))
    with tempfile.TemporaryDirectory() as folder:
        plain, durable, size = bare_save(work, Path(folder))
    stall = statistics.median(stalls)
    memory = "GPU" if work.cuda else "CPU (dry run)"
    return Row(5, f"checkpoint stall, last.pt every {every} steps ({len(at)} in the window)",
               f"torch.save from {memory} memory {plain * 1e3:,.1f} ms (with fsync {durable * 1e3:,.1f} ms), {size / 2**20:,.1f} MiB",
               f"mode: {mode}; stall {stall * 1e3:,.1f} ms (step after a save minus a median step), "
               f"{statistics.median(per_checkpoint) * 1e3:,.1f} ms a checkpoint over the window; "
               f"last.pt {runs['with checkpoints'][-1].checkpoint_bytes / 2**20:,.1f} MiB",
               f"stall / bare torch.save = {stall / plain:.2f}",
               "stall < bare torch.save: " + ("PASS" if stall < plain else "MISS"))


def row_mfu(work: Work, report: Report) -> Row:
    from trainwire.runtime.throughput import peak_of, peak_tflops

    runs = report.data.get("bf16")
    if not runs:
        raise RuntimeError("row 1 did not run, and this row reads its trainwire runs")
    last = [run.history[-1] for run in runs["trainwire"]]  # the second epoch: no FLOP counting, no warm-up
    tflops = statistics.median(m["time/tflops"] for m in last)
    mfu = [m.get("time/mfu") for m in last]
    counted = statistics.median(m["time/tflops"] * 1e12 / m["time/samples_per_s"] for m in last) / work.sizes.seq
    analytic = analytic_flops_per_token(work.sizes)
    peak = peak_tflops(work.device)
    name = torch.cuda.get_device_name(work.device) if work.cuda else "cpu"
    versus = ", ".join(f"{tflops / peak_of(gpu):.3f} of {gpu} ({peak_of(gpu):g})" for gpu in ("A100", "H100", "H200"))
    reported = (f"time/mfu {statistics.median(mfu):.3f} (peak {peak:g} TFLOP/s for {name})" if None not in mfu
                else f"time/mfu not reported (no peak known for {name})")
    if work.cuda:
        memory = statistics.median(m["memory/max_allocated_gib"] for m in last)
        report.notes.append(f"MFU: trainwire's second bf16 epoch peaked at {memory:.2f} GiB allocated (memory/max_allocated_gib)")
    else:
        report.notes.append("MFU, dry run: torch's FLOP counter has no formula for the CPU attention kernel, so the "
                            "count there is the matrix multiplies alone")
    return Row(6, "MFU (bf16, trainwire's second epoch)",
               f"analytic {analytic / 1e6:,.1f} MFLOP/token", f"{reported}; {tflops:,.2f} TFLOP/s",
               f"{versus}; counted FLOPs / analytic = {counted / analytic:.3f}",
               "FLOP count within 5% of analytic: " + ("PASS" if abs(counted / analytic - 1) <= 0.05 else "MISS"))


# Run in this order: compile last, as the slowest and the likeliest to overrun the budget.
ROWS: tuple[tuple[int, str, Callable[[Work, Report], Row]], ...] = (
    (1, "bf16 autocast, steps/s", row_bf16),
    (2, "fp16 + grad scaler, steps/s; skipped steps", row_fp16),
    (3, "host syncs", row_syncs),
    (5, "checkpoint stall", row_checkpoint),
    (6, "MFU", row_mfu),
    (4, "bf16, compiled, steps/s", row_compile),
)


# -- the report -----------------------------------------------------------------------------------
def describe(work: Work, dry_run: bool) -> list[str]:
    import trainwire

    try:
        commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    if work.cuda:
        props = torch.cuda.get_device_properties(work.device)
        device = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        device = f"CPU only ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    s = work.sizes
    lines = [f"Device: {device}; torch {torch.__version__}; Python {platform.python_version()}; "
             f"trainwire {trainwire.__version__} at {commit}  ",
             f"Model: GPT {s.layers} layers × {s.width} wide, {s.heads} heads, vocabulary {s.vocab}, sequence {s.seq}, "
             f"batch {s.batch}; {s.epochs} epochs × {s.batches} batches; steps/s from batch {s.warmup} to the last; "
             f"rounds: {s.rounds} interleaved ({s.compile_rounds} compiled); ratio = median of per-round trainwire / "
             "hand-written"]
    if dry_run:
        lines.insert(0, "**DRY RUN**: tiny sizes on the CPU; the numbers mean nothing.")
    return lines


def render(report: Report, header: list[str], elapsed: float) -> str:
    headers = ("#", "check", "hand-written / reference", "trainwire", "result", "target")
    lines = [*header, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for number in sorted(report.rows):
        row = report.rows[number]
        cells = [str(row.number), row.check, row.reference, row.trainwire, row.result, row.target]
        lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |")
    lines += ["", "Notes:", *(f"- {note}" for note in report.notes), "", f"(ran in {elapsed:.0f} s)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, a few seconds: checks the script")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="rows not started by then are skipped (default 330: the whole run stays under 6 minutes)")
    args = parser.parse_args(argv)
    BUDGET[0] = args.budget_s
    if args.dry_run:
        device, sizes = torch.device("cpu"), DRY
        torch.set_num_threads(1)  # the machine is shared; tiny sizes gain nothing from more threads
    elif torch.cuda.is_available():
        device, sizes = torch.device("cuda"), FULL
    else:
        print("no CUDA device: this script measures a GPU (run --dry-run to check it on the CPU)", file=sys.stderr)
        return 2
    work = make_work(sizes, device)
    report = Report()
    for number, check, how in ROWS:
        if time.monotonic() - START > BUDGET[0]:
            report.rows[number] = Row(number, check, target=f"skipped: the {args.budget_s:.0f} s budget was spent")
            continue
        say(f"row {number}: {check}")
        try:
            report.rows[number] = how(work, report)
        except Exception as error:  # one row's failure must not cost the others their one GPU run
            report.failed = True
            traceback.print_exc()
            report.rows[number] = Row(number, check, result=f"ERROR: {type(error).__name__}: {error}"[:400])
            report.notes.append(f"row {number} failed: " + "".join(
                traceback.format_exception_only(type(error), error)).strip()[:1000])
        settle()
    text = render(report, describe(work, args.dry_run), time.monotonic() - START)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
