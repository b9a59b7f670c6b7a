"""Per-step overhead of ``trainwire.Trainer.fit`` against a hand-written PyTorch loop.

Both loops do the same work on the same model, data and initial weights, in the same process,
interleaved round by round (ABBA order, so slow drift of the machine cancels):

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

Times are end to end: building the optimizer, scheduler and sink, every step, and closing
(trainwire's ``fit`` also writes and fsyncs ``summary.json``). Each run is timed by the wall
clock (steps/s, the verdict) and by the process's CPU time (a cross-check that other processes
on the machine disturb much less). Targets: trainwire/hand-written steps/s >= 0.95 (tiny),
>= 0.99 (compute-bound). A benchmark, not a test: it prints PASS/MISS and exits 0 either way.

    python benchmarks/overhead.py             # full run, about 1.5 minutes on 2 idle cores
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

import trainwire
from trainwire import Classification, JsonlSink, NeverStop, NormClipper, Trainer, TrainerSettings, WarmupCosine

LOG_EVERY = 10  # trainwire's default log_every_n_steps
LR = 1e-3
START_FACTOR = 1e-3  # WarmupCosine's default start_factor
MAX_NORM = 1.0
DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


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
            Workload("tiny", (32, 64, 10), 64, 50, 4, 1, 0.95),
            Workload("compute", (512, 1024, 1024, 10), 256, 4, 2, compute_threads, 0.99),
        ]
    return [
        Workload("tiny", (32, 64, 10), 64, 200, 15, 1, 0.95),  # ~0.5 ms a step here
        Workload("compute", (512, 1024, 1024, 10), 256, 20, 3, compute_threads, 0.99),  # ~30 ms a step here
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
# The loops. Each does one whole run: setup, work.steps optimizer steps, teardown.

QUIET_LOGGER = structlog.wrap_logger(structlog.PrintLogger(DEVNULL))  # default processors, rendered to /dev/null


def run_trainwire(model: nn.Module, data: Any, work: Workload, run_dir: Path) -> None:
    trainer = Trainer(
        objective=Classification(),
        optimizer=functools.partial(torch.optim.AdamW, lr=LR),
        settings=TrainerSettings(max_epochs=work.epochs, device="cpu"),
        lr_policy=WarmupCosine(warmup_steps=work.warmup_steps),
        gradient_policy=NormClipper(MAX_NORM),
        stopping_policy=NeverStop(),
        sink=JsonlSink(run_dir),
        logger=QUIET_LOGGER,
    )
    result = trainer.fit(model, data)
    assert result.steps == work.steps, (result.steps, work.steps)


def run_handwritten(model: nn.Module, data: Any, work: Workload, run_dir: Path) -> None:
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


def run_lightning(model: nn.Module, data: Any, work: Workload, run_dir: Path) -> None:  # pragma: no cover
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


Runner = Callable[[nn.Module, Any, Workload, Path], None]


# ---------------------------------------------------------------------------------------------


@dataclass
class Timings:
    wall: list[float] = field(default_factory=list)  # seconds per timed round
    cpu: list[float] = field(default_factory=list)


def timed(runner: Runner, model: nn.Module, data: Any, work: Workload, run_dir: Path) -> tuple[float, float]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    runner(model, data, work, run_dir)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(work: Workload, rounds: int, dataloader: bool, tmp: Path, extra: dict[str, Runner]) -> dict[str, Any]:
    torch.set_num_threads(work.threads)
    torch.manual_seed(0)
    template = make_model(work.sizes)
    data = make_data(work, dataloader)
    runners: dict[str, Runner] = {"trainwire": run_trainwire, "hand-written": run_handwritten, **extra}
    timings = {name: Timings() for name in runners}
    for index in range(rounds + 1):  # round 0 warms up and checks; it is not recorded
        order = list(runners)
        if index % 2:
            order[0], order[1] = order[1], order[0]  # ABBA between the two that are compared
        finals: dict[str, nn.Module] = {}
        now: dict[str, tuple[float, float]] = {}
        for name in order:
            finals[name] = copy.deepcopy(template)
            now[name] = timed(runners[name], finals[name], data, work, tmp / f"{work.name}-{name}-{index}")
        if index == 0:
            diff = max((a - b).abs().max().item()
                       for a, b in zip(finals["trainwire"].parameters(), finals["hand-written"].parameters()))
            print(f"  [{work.name}] warmup round: max |trainwire - hand-written| over the final weights = {diff:.3g}"
                  + ("" if diff == 0 else "  (the loops do not do identical work!)"), flush=True)
            continue
        for name, (wall, cpu) in now.items():
            timings[name].wall.append(wall)
            timings[name].cpu.append(cpu)
        print(f"  [{work.name}] round {index}/{rounds}: "
              + ", ".join(f"{name} {work.steps / wall:,.0f} steps/s" for name, (wall, _) in now.items())
              + f", ratio {now['hand-written'][0] / now['trainwire'][0]:.3f}"
              + f" (CPU time {now['hand-written'][1] / now['trainwire'][1]:.3f})", flush=True)
    tw, hw = timings["trainwire"], timings["hand-written"]
    return {
        "work": work,
        "timings": timings,
        "ratio_wall": [h / t for h, t in zip(hw.wall, tw.wall)],
        "ratio_cpu": [h / t for h, t in zip(hw.cpu, tw.cpu)],
        "overhead_us": [(t - h) / work.steps * 1e6 for t, h in zip(tw.cpu, hw.cpu)],
        "busy": [c / w for c, w in zip(tw.cpu + hw.cpu, tw.wall + hw.wall)],
    }


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
    return (f"{cpu}, {os.cpu_count()} cores; torch {torch.__version__}; Python {platform.python_version()}; "
            f"trainwire {trainwire.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (numbers not meaningful)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per workload (default 9; 2 with --quick)")
    parser.add_argument("--dataloader", action="store_true", help="feed the tiny workload through a DataLoader")
    parser.add_argument("--compute-threads", type=int, default=1,
                        help="torch threads for the compute-bound workload (default 1: on small shared VMs "
                        "two threads can swing 10x from run to run)")
    parser.add_argument("--only", choices=("tiny", "compute"), help="run one workload only")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 9)
    if rounds < 1:
        parser.error("--rounds must be >= 1")

    extra: dict[str, Runner] = {}
    try:
        import lightning  # noqa: F401
    except ImportError:
        print("note: lightning is not installed; skipping the Lightning comparison")
    else:
        extra["lightning"] = run_lightning

    print(f"machine: {machine()}")
    print("fairness: both loops read the loss and the grad norm with .item() every 10 steps and append loss, lr "
          "and grad norm to metrics.jsonl (flushed); both read the epoch's mean loss once per epoch and log one "
          "line to /dev/null (trainwire: structlog, default processors, rendered into /dev/null)", flush=True)
    results = []
    fixed: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trainwire-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for work in workloads(args.quick, args.compute_threads):
            if args.only and work.name != args.only:
                continue
            print(f"{work.describe()}: {work.steps} steps a round ({work.epochs} epochs × {work.batches_per_epoch} "
                  f"batches), {rounds} rounds after a warmup round", flush=True)
            use_dataloader = args.dataloader and work.name == "tiny"
            results.append(measure(work, rounds, use_dataloader, tmp, extra if work.name == "tiny" else {}))
            if work.name == "tiny":
                fixed = fixed_cost(work, tmp, 3 if args.quick else 9)
    elapsed = time.perf_counter() - started

    print()
    print(f"Machine: {machine()}  ")
    print(f"Data: {'a DataLoader (tiny)' if args.dataloader else 'a pre-built list of batches'}; {rounds} "
          "interleaved rounds per workload after a warmup round; median (min–max) over rounds; ratio = median of "
          "the per-round trainwire/hand-written steps/s, by wall clock and by process CPU time; overhead = extra "
          "CPU time per step." + (" QUICK SMOKE RUN: the numbers mean nothing." if args.quick else ""))
    print()
    print("| workload | steps/round | trainwire steps/s | hand-written steps/s | ratio (wall) | ratio (CPU) "
          "| overhead µs/step | target | result |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for result in results:
        work, timings = result["work"], result["timings"]
        ratio = statistics.median(result["ratio_wall"])
        verdict = "PASS" if ratio >= work.target else "MISS"
        cells = [
            work.describe(), str(work.steps),
            spread([work.steps / s for s in timings["trainwire"].wall], ",.0f"),
            spread([work.steps / s for s in timings["hand-written"].wall], ",.0f"),
            spread(result["ratio_wall"], ".3f"), spread(result["ratio_cpu"], ".3f"),
            spread(result["overhead_us"], ".1f"), f"≥ {work.target}", verdict,
        ]
        print("| " + " | ".join(cells) + " |")
        if "lightning" in timings:
            light = spread([work.steps / s for s in timings["lightning"].wall], ",.0f")
            print(f"| {work.name} via Lightning | {work.steps} | {light} (Lightning) | | | | | | |")
    print()
    if fixed:
        print(f"Whole 2-step runs (tiny; mostly setup and teardown), median wall time: trainwire "
              f"{fixed['trainwire'] * 1e3:.2f} ms, hand-written {fixed['hand-written'] * 1e3:.2f} ms; included in "
              "the rounds above (trainwire's fit also writes and fsyncs summary.json).")
    busy = min(statistics.median(result["busy"]) for result in results) if results else 1.0
    if busy < 0.9:
        print(f"warning: the benchmark got only {busy:.0%} of a core while running (other processes compete "
              "for the CPU): wall-clock ratios are noisy; the CPU-time ratio is the steadier figure.")
    print(f"(ran in {elapsed:.0f} s; exit status 0 whatever the result: this is a benchmark, not a test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
