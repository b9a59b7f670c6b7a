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
(trainwire's ``fit`` also writes and fsyncs ``summary.json``). The fixed per-run part is
reported separately. Targets: trainwire/hand-written steps/s >= 0.95 (tiny), >= 0.99 (compute).
This is a benchmark, not a test: it prints PASS/MISS and exits 0 either way.

    python benchmarks/overhead.py             # full run, about 1-2 minutes on 2 cores
    python benchmarks/overhead.py --quick     # smoke run, a few seconds
    python benchmarks/overhead.py --rounds 11
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
from dataclasses import dataclass
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
START_FACTOR = 1e-3  # WarmupCosine's default
MAX_NORM = 1.0


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
        arrows = "→".join(str(size) for size in self.sizes)
        return f"{self.name}: MLP {arrows}, batch {self.batch_size}, {self.threads} thread(s)"


def workloads(quick: bool, compute_threads: int) -> list[Workload]:
    if quick:
        return [
            Workload("tiny", (32, 64, 10), 64, 50, 4, 1, 0.95),
            Workload("compute", (512, 1024, 1024, 10), 256, 4, 2, compute_threads, 0.99),
        ]
    return [
        Workload("tiny", (32, 64, 10), 64, 200, 15, 1, 0.95),
        Workload("compute", (512, 1024, 1024, 10), 256, 20, 3, compute_threads, 0.99),
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


def quiet_logger() -> Any:
    """A structlog logger that still renders each line (default processors) but into /dev/null."""
    return structlog.wrap_logger(structlog.PrintLogger(open(os.devnull, "w")))


# ---------------------------------------------------------------------------------------------
# The two loops. Each returns the wall time of everything it does.


PROGRESS = False  # --progress: the tqdm bar on (into /dev/null), behind GuardedFanOut as the CLI wires it


def run_trainwire(model: nn.Module, data: Any, work: Workload, run_dir: Path) -> float:
    started = time.perf_counter()
    sink: Any = JsonlSink(run_dir)
    if PROGRESS:
        from trainwire import FanOut, GuardedFanOut
        from trainwire.progress import ProgressBar

        sink = GuardedFanOut(FanOut(sink, ProgressBar(work.epochs, file=DEVNULL)))
    trainer = Trainer(
        objective=Classification(),
        optimizer=functools.partial(torch.optim.AdamW, lr=LR),
        settings=TrainerSettings(max_epochs=work.epochs, device="cpu"),
        lr_policy=WarmupCosine(warmup_steps=work.warmup_steps),
        gradient_policy=NormClipper(MAX_NORM),
        stopping_policy=NeverStop(),
        sink=sink,
        logger=QUIET,
    )
    result = trainer.fit(model, data)
    elapsed = time.perf_counter() - started
    assert result.steps == work.steps, (result.steps, work.steps)
    return elapsed


def run_handwritten(model: nn.Module, data: Any, work: Workload, run_dir: Path) -> float:
    """What a competent engineer writes for the same job, logging the same things as often."""
    started = time.perf_counter()
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
    elapsed = time.perf_counter() - started
    assert step == work.steps
    return elapsed


def run_lightning(model: nn.Module, data: Any, work: Workload, run_dir: Path) -> float:  # pragma: no cover
    """The same job through Lightning (only when ``lightning`` is importable; untested here)."""
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

    started = time.perf_counter()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=work.epochs, gradient_clip_val=MAX_NORM,
        gradient_clip_algorithm="norm", log_every_n_steps=LOG_EVERY, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        logger=L.pytorch.loggers.CSVLogger(str(run_dir)), default_root_dir=str(run_dir),
    )
    trainer.fit(Module(model), train_dataloaders=data)
    return time.perf_counter() - started


DEVNULL = open(os.devnull, "w")
QUIET = quiet_logger()


# ---------------------------------------------------------------------------------------------


@dataclass
class Measured:
    sps: list[float]  # steps/s per timed round
    fixed_s: float = 0.0


def measure(work: Workload, rounds: int, dataloader: bool, tmp: Path, lightning: bool) -> dict[str, Any]:
    torch.set_num_threads(work.threads)
    torch.manual_seed(0)
    template = make_model(work.sizes)
    data = make_data(work, dataloader)
    runners = {"trainwire": run_trainwire, "hand-written": run_handwritten}
    if lightning:
        runners["lightning"] = run_lightning
    sps: dict[str, list[float]] = {name: [] for name in runners}
    ratios: list[float] = []
    overhead_us: list[float] = []
    finals: dict[str, nn.Module] = {}
    for index in range(rounds + 1):  # round 0 is a warmup, not recorded
        order = list(runners)
        if index % 2:
            order[0], order[1] = order[1], order[0]  # ABBA between the two that are compared
        times: dict[str, float] = {}
        for name in order:
            model = copy.deepcopy(template)
            gc.collect()
            times[name] = runners[name](model, data, work, tmp / f"{work.name}-{name}-{index}")
            finals[name] = model
        if index == 0:
            same = max(
                (a - b).abs().max().item()
                for a, b in zip(finals["trainwire"].parameters(), finals["hand-written"].parameters())
            )
            print(f"  [{work.name}] warmup round done; max |trainwire - hand-written| over final weights: {same:.3g}",
                  flush=True)
            continue
        for name, seconds in times.items():
            sps[name].append(work.steps / seconds)
        ratios.append(times["hand-written"] / times["trainwire"])
        overhead_us.append((times["trainwire"] - times["hand-written"]) / work.steps * 1e6)
        print(f"  [{work.name}] round {index}/{rounds}: "
              + ", ".join(f"{name} {work.steps / seconds:,.0f} steps/s" for name, seconds in times.items())
              + f", ratio {ratios[-1]:.3f}", flush=True)
    return {"work": work, "sps": sps, "ratios": ratios, "overhead_us": overhead_us}


def fixed_cost(work: Workload, tmp: Path, repeats: int = 9) -> dict[str, float]:
    """Per-run cost around the steps: median seconds of whole runs of 2 steps (1 epoch)."""
    torch.set_num_threads(work.threads)
    one = Workload(work.name, work.sizes, work.batch_size, 2, 1, work.threads, work.target)
    data = make_data(one, False)
    out = {}
    for name, runner in (("trainwire", run_trainwire), ("hand-written", run_handwritten)):
        samples = []
        for i in range(repeats):
            model = make_model(work.sizes)
            samples.append(runner(model, data, one, tmp / f"fixed-{work.name}-{name}-{i}"))
        out[name] = statistics.median(samples)
    return out


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
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per workload (default 7, 2 with --quick)")
    parser.add_argument("--dataloader", action="store_true", help="feed the tiny workload through a DataLoader")
    parser.add_argument("--compute-threads", type=int, default=1,
                        help="torch threads for the compute-bound workload (default 1: on small shared VMs "
                        "two threads can swing 10x from run to run)")
    parser.add_argument("--only", choices=("tiny", "compute"), help="run one workload only")
    parser.add_argument("--progress", action="store_true", help="trainwire with its tqdm progress bar on")
    args = parser.parse_args(argv)
    global PROGRESS
    PROGRESS = args.progress
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 7)
    if rounds < 1:
        parser.error("--rounds must be >= 1")

    try:
        import lightning  # noqa: F401
        have_lightning = True
    except ImportError:
        have_lightning = False
        print("note: lightning is not installed; skipping the Lightning comparison")

    print(f"machine: {machine()}")
    print("fairness: both loops read loss and grad norm with .item() every 10 steps and write loss, lr and "
          "grad norm to metrics.jsonl; both read the epoch mean loss once per epoch and log one line to "
          "/dev/null (trainwire: structlog with default processors into /dev/null)", flush=True)
    results = []
    fixed: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trainwire-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for work in workloads(args.quick, args.compute_threads):
            if args.only and work.name != args.only:
                continue
            print(f"{work.describe()}: {work.steps} steps a round ({work.epochs} epochs × {work.batches_per_epoch}),"
                  f" {rounds} rounds after a warmup round", flush=True)
            use_dataloader = args.dataloader and work.name == "tiny"
            results.append(measure(work, rounds, use_dataloader, tmp, have_lightning and work.name == "tiny"))
            if work.name == "tiny":
                fixed = fixed_cost(work, tmp, 3 if args.quick else 9)
    elapsed = time.perf_counter() - started

    data_note = "DataLoader" if args.dataloader else "pre-built list of batches"
    print()
    print(f"Machine: {machine()}  ")
    print(f"Data: {data_note}; {rounds} interleaved rounds per workload after a warmup round; "
          "steps/s as median (min–max) over rounds; ratio = median of per-round trainwire/hand-written."
          + (" QUICK SMOKE RUN: numbers are not meaningful." if args.quick else ""))
    print()
    print("| workload | steps/round | trainwire steps/s | hand-written steps/s | ratio | overhead µs/step "
          "| target | result |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for result in results:
        work = result["work"]
        ratio = statistics.median(result["ratios"])
        verdict = "PASS" if ratio >= work.target else "MISS"
        print(f"| {work.describe()} | {work.steps} | {spread(result['sps']['trainwire'], ',.0f')} "
              f"| {spread(result['sps']['hand-written'], ',.0f')} | {spread(result['ratios'], '.3f')} "
              f"| {spread(result['overhead_us'], '.1f')} | ≥ {work.target} | {verdict} |")
        if "lightning" in result["sps"]:
            light = result["sps"]["lightning"]
            print(f"| {work.name} via Lightning | {work.steps} | {spread(light, ',.0f')} | — | — | — | — | — |")
    print()
    if fixed:
        print(f"Whole runs of 2 steps (tiny; setup, sink files, teardown), median: trainwire "
              f"{fixed['trainwire'] * 1e3:.2f} ms, hand-written {fixed['hand-written'] * 1e3:.2f} ms "
              "(included in the steps/s above; trainwire's fit also writes and fsyncs summary.json).")
    print(f"(ran in {elapsed:.0f} s; exit status is 0 whatever the result: this is a benchmark, not a test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
