"""Per-step overhead of ``trainwire.Trainer.fit`` against a hand-written PyTorch loop.

Both loops do the same work on the same model, data and initial weights, in the same process:

* AdamW(lr=1e-3); warmup-cosine lr (torch LinearLR + CosineAnnealingLR + SequentialLR, stepped
  after every optimizer step, as ``WarmupCosine(interval="step")`` builds it);
  ``clip_grad_norm_(max_norm=1.0, foreach=True)``; ``zero_grad(set_to_none=True)``.
* Logging: every 10th optimizer step both read the loss and the grad norm with ``.item()`` and
  append a JSON line (loss, lr, grad norm) to ``metrics.jsonl``, flushed; once per epoch both
  read the epoch's mean loss, append it to the file and write one log line to /dev/null.
* trainwire runs at its defaults as the CLI builds it (``log_every_n_steps=10``, the local
  ``JsonlSink`` record on, no validation data), with a structlog logger that renders its
  per-epoch lines with structlog's default processors into /dev/null.
* Data is a pre-built list of (x, y) batches, identical for both (``--dataloader`` swaps in a
  ``DataLoader`` over a ``TensorDataset`` for the tiny workload).

Two measurements:

1. Whole runs, interleaved (ABBA: trainwire, hand-written, hand-written, trainwire, ...), timed
   end to end by the wall clock: setup, every step, teardown (trainwire's ``fit`` also writes and
   fsyncs ``summary.json``). Their steps/s, and the median of the per-round ratios, give the
   verdict against the targets: >= 0.98 (tiny; issue 22), >= 0.99 (compute-bound).
2. Lockstep: the two loops run on two threads that hand a baton over after every step, so
   step k of one and step k of the other run back to back and meet the same machine. Each
   loop's active time per step is recorded (trainwire through an ``on_batch_end`` hook, the
   hand-written loop by the same call). Per step phase (step mod 10, so logged steps count in
   their share) each loop's 10th-percentile time is its undisturbed step (other processes only
   ever add time); trainwire's overhead is the difference. The rounds go through the four
   combinations of which loop starts and which thread is made first (each is worth a few µs a
   step). On a machine that other processes keep busy, the whole-run ratio swings by tens of
   percent and this one by a few µs a step. For long steps (compute) it cannot resolve
   trainwire's overhead, so the script also prints the ratio implied by the tiny workload's
   overhead, which does not grow with the model.

A benchmark, not a test: it prints PASS/MISS and exits 0 either way.

    python benchmarks/overhead.py             # full run, about 2 minutes on 2 idle cores, 3 on busy ones
    python benchmarks/overhead.py --quick     # smoke run, a few seconds
    python benchmarks/overhead.py --rounds 15
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

import trainwire
from trainwire import (
    Classification,
    JsonlSink,
    NeverStop,
    NormClipper,
    Trainer,
    TrainerSettings,
    WarmupCosine,
)

LOG_EVERY = 10  # trainwire's default log_every_n_steps
LR = 1e-3
START_FACTOR = 1e-3  # WarmupCosine's default start_factor
MAX_NORM = 1.0
DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
QUIET_LOGGER = structlog.wrap_logger(structlog.PrintLogger(DEVNULL))  # default processors, rendered to /dev/null


@dataclass
class Workload:
    name: str
    sizes: tuple[int, ...]  # MLP widths: in, hidden..., out
    batch_size: int
    batches_per_epoch: int
    epochs: int
    threads: int
    target: float

    @property
    def steps(self) -> int:
        return self.batches_per_epoch * self.epochs

    @property
    def warmup_steps(self) -> int:
        return max(1, self.steps // 10)

    def describe(self) -> str:
        widths = "→".join(str(size) for size in self.sizes)
        threads = "1 thread" if self.threads == 1 else f"{self.threads} threads"
        return f"{self.name}: MLP {widths}, batch {self.batch_size}, {threads}"


def workloads(quick: bool, compute_threads: int) -> list[Workload]:
    if quick:
        return [
            Workload("tiny", (32, 64, 10), 64, 50, 4, 1, 0.98),
            Workload("compute", (512, 1024, 1024, 10), 256, 5, 2, compute_threads, 0.99),
        ]
    return [
        Workload("tiny", (32, 64, 10), 64, 200, 15, 1, 0.98),  # ~0.5 ms a step on the reference VM
        Workload("compute", (512, 1024, 1024, 10), 256, 20, 3, compute_threads, 0.99),  # ~30 ms a step
    ]


def make_model(sizes: tuple[int, ...]) -> nn.Module:
    layers: list[nn.Module] = []
    for width, size in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(width, size), nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def make_data(work: Workload, dataloader: bool) -> Any:
    generator = torch.Generator().manual_seed(0)
    n = work.batch_size * work.batches_per_epoch
    inputs = torch.randn(n, work.sizes[0], generator=generator)
    teacher = torch.randn(work.sizes[0], work.sizes[-1], generator=generator)
    targets = (inputs @ teacher).argmax(dim=1)  # learnable labels, so the losses fall
    if dataloader:
        dataset = torch.utils.data.TensorDataset(inputs, targets)
        return torch.utils.data.DataLoader(dataset, batch_size=work.batch_size, shuffle=False)
    return [(x.clone(), y.clone()) for x, y in zip(inputs.split(work.batch_size), targets.split(work.batch_size))]


# ---------------------------------------------------------------------------------------------
# The loops. Each does one whole run: setup, work.steps optimizer steps, teardown. ``baton`` is
# None in the whole-run rounds (trainwire then runs with no hooks at all).


PROGRESS = False  # --progress: the tqdm bar on (into /dev/null), wired as the CLI wires it


def _sink(run_dir: Path, work: Workload) -> Any:
    if not PROGRESS:
        return JsonlSink(run_dir)
    from trainwire import FanOut, GuardedFanOut
    from trainwire.sinks.progress import ProgressBar

    return GuardedFanOut(FanOut(JsonlSink(run_dir), ProgressBar(work.epochs, file=DEVNULL)))


def run_trainwire(model: nn.Module, data: Any, work: Workload, run_dir: Path, baton: Baton | None) -> None:
    trainer = Trainer(
        objective=Classification(),
        optimizer=functools.partial(torch.optim.AdamW, lr=LR),
        settings=TrainerSettings(max_epochs=work.epochs, device="cpu"),
        lr_policy=WarmupCosine(warmup_steps=work.warmup_steps),
        gradient_policy=NormClipper(MAX_NORM),
        stopping_policy=NeverStop(),
        sink=_sink(run_dir, work),
        hooks=[] if baton is None else [baton],
        logger=QUIET_LOGGER,
    )
    result = trainer.fit(model, data)
    assert result.steps == work.steps, (result.steps, work.steps)


def run_handwritten(model: nn.Module, data: Any, work: Workload, run_dir: Path, baton: Baton | None) -> None:
    """What a competent engineer writes for the same job, logging the same things as often."""
    run_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    warmup, total = work.warmup_steps, work.steps
    scheduler = SequentialLR(
        optimizer,
        [
            LinearLR(optimizer, start_factor=START_FACTOR, end_factor=1.0, total_iters=warmup),
            CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=0.0),
        ],
        milestones=[warmup],
    )
    step = 0
    model.train()
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as metrics:
        for epoch in range(work.epochs):
            losses = []
            for inputs, targets in data:
                loss = F.cross_entropy(model(inputs), targets)
                loss.backward()
                losses.append(loss.detach())
                norm = torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=True)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if baton is not None:  # where trainwire's on_batch_end runs: after the step's work, before its log
                    baton.on_batch_end(None, losses[-1])
                step += 1
                if step % LOG_EVERY == 0:
                    record = {"step": step, "epoch": epoch, "train/loss": loss.item(), "train/lr": lr,
                              "train/grad_norm": norm.item()}
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
            epoch_loss = torch.stack(losses).mean().item()
            metrics.write(json.dumps({"step": step, "epoch": epoch, "train/epoch_loss": epoch_loss}) + "\n")
            metrics.flush()
            print(f"epoch={epoch} step={step} train/epoch_loss={epoch_loss}", file=DEVNULL)
    assert step == work.steps


def run_lightning(model: nn.Module, data: Any, work: Workload, run_dir: Path, baton: Baton | None) -> None:
    """The same job through Lightning (only when ``lightning`` is importable; not exercised here)."""
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            loss = F.cross_entropy(self.net(inputs), targets)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.AdamW(self.parameters(), lr=LR)
            warmup, total = work.warmup_steps, work.steps
            scheduler = SequentialLR(
                optimizer,
                [LinearLR(optimizer, start_factor=START_FACTOR, end_factor=1.0, total_iters=warmup),
                 CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=0.0)],
                milestones=[warmup],
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=work.epochs, gradient_clip_val=MAX_NORM,
        gradient_clip_algorithm="norm", log_every_n_steps=LOG_EVERY, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        logger=L.pytorch.loggers.CSVLogger(str(run_dir)), default_root_dir=str(run_dir),
    )
    trainer.fit(Module(model), train_dataloaders=data)


Runner = Callable[[nn.Module, Any, Workload, Path, "Baton | None"], None]


# ---------------------------------------------------------------------------------------------
# Whole runs, interleaved.


def timed(runner: Runner, model: nn.Module, data: Any, work: Workload, run_dir: Path) -> tuple[float, float]:
    """One whole run; returns its wall seconds and process CPU seconds."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    runner(model, data, work, run_dir, None)
    return time.perf_counter() - wall, time.process_time() - cpu


def whole_runs(work: Workload, data: Any, rounds: int, tmp: Path, extra: dict[str, Runner]) -> dict[str, Any]:
    template = make_model(work.sizes)
    runners: dict[str, Runner] = {"trainwire": run_trainwire, "hand-written": run_handwritten, **extra}
    walls: dict[str, list[float]] = {name: [] for name in runners}
    cpu_share: list[float] = []
    for index in range(rounds + 1):  # round 0 warms up and checks; it is not recorded
        order = list(runners)
        if index % 2:
            order[0], order[1] = order[1], order[0]  # ABBA between the two that are compared
        finals: dict[str, nn.Module] = {}
        now: dict[str, float] = {}
        for name in order:
            finals[name] = copy.deepcopy(template)
            now[name], cpu = timed(runners[name], finals[name], data, work, tmp / f"{work.name}-{name}-{index}")
            cpu_share.append(cpu / now[name] / work.threads)
        if index == 0:
            diff = max((a - b).abs().max().item()
                       for a, b in zip(finals["trainwire"].parameters(), finals["hand-written"].parameters()))
            progress(f"  [{work.name}] warmup round: max |trainwire - hand-written| over the final weights = "
                     f"{diff:.3g}" + ("" if diff == 0 else "  (the loops do not do identical work!)"))
            if diff != 0:
                print(f"warning ({work.name}): the two loops ended with different weights (max |diff| {diff:.3g}): "
                      "they no longer do the same work; the comparison is off")
            continue
        for name, wall in now.items():
            walls[name].append(wall)
        progress(f"  [{work.name}] round {index}/{rounds}: "
                 + ", ".join(f"{name} {work.steps / wall:,.0f} steps/s" for name, wall in now.items())
                 + f"; ratio {now['hand-written'] / now['trainwire']:.3f}")
    return {
        "sps": {name: [work.steps / wall for wall in values] for name, values in walls.items()},
        "ratio": [h / t for h, t in zip(walls["hand-written"], walls["trainwire"])],
        "cpu_share": statistics.median(cpu_share),
    }


# ---------------------------------------------------------------------------------------------
# Lockstep runs.


class Baton:
    """Hands control to the partner loop after every step's work; records this loop's active time.

    ``active[k]`` is the time from resuming after batch k-1 to the end of batch k's optimizer
    step: step k-1's logging (on logged steps) plus batch k's forward, backward, clipping,
    optimizer and schedule step. (trainwire's ``on_batch_end`` runs there since the step port,
    ADR 0015; it used to run after the backward, and so did this hand-over.)
    """

    def __init__(self) -> None:
        self.go = threading.Event()
        self.done = False
        self.partner: Baton | None = None
        self.active: list[float] = []
        self.resumed = 0.0
        self._now = time.perf_counter

    def on_batch_end(self, state: Any, loss: Any) -> None:
        self.active.append(self._now() - self.resumed)
        self.go.clear()
        self.partner.go.set()
        if not self.partner.done:
            self.go.wait()
        self.resumed = self._now()

    def run(self, runner: Runner, *args: Any) -> None:
        self.go.wait()
        self.resumed = self._now()
        try:
            runner(*args, self)
        finally:
            self.done = True
            self.partner.go.set()


def lockstep(work: Workload, data: Any, tmp: Path, index: int) -> dict[str, list[float]]:
    """One run of each loop in lockstep; returns the active seconds per batch of each.

    Which loop starts first and which thread is created first both matter a little (a few µs a
    step, either way), so they go through all four combinations as ``index`` counts up.
    """
    template = make_model(work.sizes)
    batons = {"trainwire": Baton(), "hand-written": Baton()}
    batons["trainwire"].partner, batons["hand-written"].partner = batons["hand-written"], batons["trainwire"]
    names = ["trainwire", "hand-written"]
    first = names[index % 2]
    if index // 2 % 2:
        names.reverse()
    runners = {"trainwire": run_trainwire, "hand-written": run_handwritten}
    errors: list[BaseException] = []

    def target(name: str) -> None:
        try:
            batons[name].run(runners[name], copy.deepcopy(template), data, work,
                             tmp / f"lockstep-{work.name}-{name}-{index}")
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=target, args=(name,)) for name in names]
    # One core for both threads (they inherit the affinity), so that both loops meet the same core:
    # on a VM the cores can differ in speed for a while, which no statistic of the windows undoes.
    pinned = work.threads == 1 and hasattr(os, "sched_setaffinity")
    if pinned:
        cores = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(cores)})
    try:
        gc.collect()
        for thread in threads:
            thread.start()
        batons[first].go.set()
        for thread in threads:
            thread.join()
    finally:
        if pinned:
            os.sched_setaffinity(0, cores)
    if errors:
        raise errors[0]
    return {name: baton.active for name, baton in batons.items()}


def _low(values: list[float]) -> float:
    """The 10th percentile: interference from other processes only ever adds time."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 10]


def lockstep_overhead(work: Workload, active: dict[str, list[float]]) -> dict[str, float]:
    """Steady-state seconds per step of the hand-written loop, and trainwire's extra per step and per epoch.

    Window k (k >= 1) holds optimizer step k-1 (logged when k % LOG_EVERY == 0) and batch k's
    forward and backward; the windows that open an epoch also hold the per-epoch work. With many
    steps: per step phase (k mod LOG_EVERY) each loop's 10th-percentile window is its undisturbed
    time, and the mean over the phases is the time per step, logged steps counted in their
    share. With few (long) steps: the median window of each, and the median paired difference.
    """
    tw, hw = active["trainwire"], active["hand-written"]
    windows = [k for k in range(1, min(len(tw), len(hw))) if k % work.batches_per_epoch]  # 0 holds the setup
    epoch_windows = [k for k in range(1, min(len(tw), len(hw))) if k % work.batches_per_epoch == 0]
    if len(windows) >= 30 * LOG_EVERY:
        step = {}
        for name, times in (("trainwire", tw), ("hand-written", hw)):
            phases = [[times[k] for k in windows if k % LOG_EVERY == phase] for phase in range(LOG_EVERY)]
            step[name] = statistics.fmean(_low(group) for group in phases if group)
        hw_step, overhead = step["hand-written"], step["trainwire"] - step["hand-written"]
    else:
        hw_step = statistics.median(hw[k] for k in windows)
        overhead = statistics.median(tw[k] - hw[k] for k in windows)
    epoch = float("nan")
    if epoch_windows:
        epoch = statistics.median(tw[k] - hw[k] for k in epoch_windows) - overhead
    return {"step_s": hw_step, "overhead_s": overhead, "epoch_overhead_s": epoch}


# ---------------------------------------------------------------------------------------------


def measure(work: Workload, rounds: int, lockstep_rounds: int, dataloader: bool, tmp: Path,
            extra: dict[str, Runner]) -> dict[str, Any]:
    torch.set_num_threads(work.threads)
    torch.manual_seed(0)
    data = make_data(work, dataloader)
    result: dict[str, Any] = {"work": work, **whole_runs(work, data, rounds, tmp, extra)}
    # (lockstep rounds run on one pinned core when the workload uses one thread; see lockstep())
    steps = []
    for index in range(lockstep_rounds):
        steps.append(lockstep_overhead(work, lockstep(work, data, tmp, index)))
        last = steps[-1]
        progress(f"  [{work.name}] lockstep {index + 1}/{lockstep_rounds}: hand-written step "
              f"{last['step_s'] * 1e6:,.1f} µs, trainwire +{last['overhead_s'] * 1e6:.2f} µs a step, "
              f"+{last['epoch_overhead_s'] * 1e6:.0f} µs an epoch")
    # The rounds balance who starts first, so their mean (not median) cancels that bias.
    step_s = statistics.fmean(s["step_s"] for s in steps)
    overhead_s = statistics.fmean(s["overhead_s"] for s in steps)
    result["step_ratio"] = step_s / (step_s + overhead_s)
    result["step_us"] = step_s * 1e6
    result["overhead_us"] = [s["overhead_s"] * 1e6 for s in steps]
    result["epoch_overhead_us"] = [s["epoch_overhead_s"] * 1e6 for s in steps]
    return result


def fixed_cost(work: Workload, tmp: Path, repeats: int) -> dict[str, float]:
    """Median wall seconds of whole runs of 2 steps (1 epoch): mostly setup and teardown."""
    torch.set_num_threads(work.threads)
    short = Workload(work.name, work.sizes, work.batch_size, 2, 1, work.threads, work.target)
    data = make_data(short, False)
    samples: dict[str, list[float]] = {"trainwire": [], "hand-written": []}
    for index in range(repeats):
        for name, runner in (("trainwire", run_trainwire), ("hand-written", run_handwritten)):
            run_dir = tmp / f"fixed-{work.name}-{name}-{index}"
            samples[name].append(timed(runner, make_model(work.sizes), data, short, run_dir)[0])
    return {name: statistics.median(values) for name, values in samples.items()}


def spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = " (load {:.1f})".format(os.getloadavg()[0]) if hasattr(os, "getloadavg") else ""
    return (f"{cpu}, {os.cpu_count()} cores{load}; torch {torch.__version__}; Python {platform.python_version()}; "
            f"trainwire {trainwire.__version__}")


def progress(line: str) -> None:
    """Progress goes to stderr; stdout holds only the report (run_all.py collects it)."""
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (numbers mean nothing)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="whole-run rounds per workload (default 9; 2 with --quick)")
    parser.add_argument("--lockstep-rounds", type=int, default=None,
                        help="lockstep rounds per workload (default 8 for tiny, 4 for compute: multiples of 4 "
                        "balance who starts; 1 with --quick)")
    parser.add_argument("--dataloader", action="store_true", help="feed the tiny workload through a DataLoader")
    parser.add_argument("--compute-threads", type=int, default=1,
                        help="torch threads for the compute-bound workload (default 1: on small shared VMs "
                        "two threads can swing 10x from run to run)")
    parser.add_argument("--only", choices=("tiny", "compute"), help="run one workload only")
    parser.add_argument("--progress", action="store_true", help="trainwire with its tqdm progress bar on")
    args = parser.parse_args(argv)
    global PROGRESS
    PROGRESS = args.progress
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 9)
    if rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.lockstep_rounds is not None and args.lockstep_rounds < 1:
        parser.error("--lockstep-rounds must be >= 1")

    extra: dict[str, Runner] = {}
    notes: list[str] = []
    try:
        import lightning  # noqa: F401
    except ImportError:
        notes.append("Lightning: not installed, so the Lightning comparison was skipped.")
    else:
        extra["lightning"] = run_lightning

    progress(f"machine: {machine()}")
    results = []
    fixed: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trainwire-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for work in workloads(args.quick, args.compute_threads):
            if args.only and work.name != args.only:
                continue
            use_dataloader = args.dataloader and work.name == "tiny"
            lockstep_rounds = args.lockstep_rounds or (1 if args.quick else 8 if work.name == "tiny" else 4)
            progress(f"{work.describe()}: {work.steps} steps a run ({work.epochs} epochs × {work.batches_per_epoch} "
                     f"batches); {rounds} whole-run rounds after a warmup round, then {lockstep_rounds} in lockstep")
            extras = extra if work.name == "tiny" else {}
            results.append(measure(work, rounds, lockstep_rounds, use_dataloader, tmp, extras))
            if work.name == "tiny":
                fixed = fixed_cost(work, tmp, 3 if args.quick else 9)
    elapsed = time.perf_counter() - started

    print(f"Machine: {machine()}  ")
    print(f"Data: {'a DataLoader (tiny)' if args.dataloader else 'a pre-built list of batches'}; {rounds} "
          "interleaved whole-run rounds per workload after a warmup round, then "
          + ", ".join(f"{len(r['overhead_us'])} lockstep ({r['work'].name})" for r in results) + "."
          + (" QUICK SMOKE RUN: the numbers mean nothing." if args.quick else ""))
    print()
    print("| workload | trainwire steps/s | hand-written steps/s | ratio | lockstep: step µs | lockstep: overhead "
          "µs/step | lockstep: ratio | target | result |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for result in results:
        work, sps = result["work"], result["sps"]
        ratio, step_ratio = statistics.median(result["ratio"]), result["step_ratio"]
        verdict = "PASS" if ratio >= work.target else "MISS"
        verdict += f" (lockstep: {'PASS' if step_ratio >= work.target else 'MISS'})"
        overhead = result["overhead_us"]
        overhead_cell = f"{statistics.fmean(overhead):.1f}"
        if len(overhead) > 1:
            overhead_cell += f" ({min(overhead):.1f}–{max(overhead):.1f})"
        cells = [
            f"{work.describe()}, {work.steps} steps", spread(sps["trainwire"], ",.0f"),
            spread(sps["hand-written"], ",.0f"), spread(result["ratio"], ".3f"), f"{result['step_us']:,.1f}",
            overhead_cell, f"{step_ratio:.4f}", f"≥ {work.target}", verdict,
        ]
        print("| " + " | ".join(cells) + " |")
        if "lightning" in sps:
            print(f"| {work.name} via Lightning | {spread(sps['lightning'], ',.0f')} | | | | | | | |")
    print()
    print("Same work: identical final weights checked; both loops read the loss and the grad norm with .item() "
          "every 10 steps and append loss, lr and grad norm to a flushed metrics.jsonl, and read the epoch's mean "
          "loss once an epoch and log one line to /dev/null (trainwire: structlog's default processors rendering "
          "into /dev/null). trainwire runs at its defaults (so it also reads the grad norm every step to skip "
          "non-finite steps, when its version does that); the hand-written loop does not.")
    print("steps/s and ratio: whole runs by the wall clock, setup and teardown included; median (min–max) over the "
          "rounds; ratio = median of the per-round trainwire/hand-written steps/s (the verdict). lockstep: the two "
          "loops on two threads taking turns after every step; per step phase (step mod 10, so logged steps "
          "count in their share) each loop's 10th-percentile active time (for runs under 300 steps: the median "
          "paired difference); step = the hand-written loop's, overhead = trainwire's extra (mean (min–max) over "
          "the rounds, which balance who starts), ratio = step / (step + overhead). Per-epoch and per-run work are "
          "left out of the lockstep figures.")
    tiny = next((result for result in results if result["work"].name == "tiny"), None)
    for result in results:
        if tiny is not None and result is not tiny:
            tiny_overhead = statistics.fmean(tiny["overhead_us"])
            print(f"{result['work'].name}: tiny's per-step overhead ({tiny_overhead:.1f} µs, which does not grow with "
                  f"the model) is {tiny_overhead / result['step_us']:.2%} of a {result['work'].name} step: an implied "
                  f"ratio of {result['step_us'] / (result['step_us'] + tiny_overhead):.4f}, finer than this "
                  "machine resolves directly.")
    if tiny is not None:
        print(f"Per epoch (tiny), trainwire's extra beyond its per-step overhead: "
              f"{spread(tiny['epoch_overhead_us'], '.0f')} µs.")
    if fixed:
        print(f"Whole 2-step runs (tiny; mostly setup and teardown), median wall time: trainwire "
              f"{fixed['trainwire'] * 1e3:.2f} ms, hand-written {fixed['hand-written'] * 1e3:.2f} ms "
              "(trainwire's fit also writes and fsyncs summary.json).")
    share = min((result["cpu_share"] for result in results), default=1.0)
    if share < 0.9:
        print(f"warning: the benchmark got only {share:.0%} of its cores in the whole-run rounds (other processes "
              "compete for the CPU): whole-run ratios are noisy; trust the lockstep ratio.")
    for note in notes:
        print(note)
    print(f"(ran in {elapsed:.0f} s; exit status 0 whatever the result: this is a benchmark, not a test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
