"""trainwire side by side with a hand-written loop, Lightning and the Hugging Face Trainer, on three workloads.

    python benchmarks/peers.py                 # every workload, eager and compiled (peers when importable)
    python benchmarks/peers.py --quick         # a smoke run in seconds: tiny sizes, eager only, in one process
    python benchmarks/peers.py --only cnn --rounds 5 --no-compile

Workloads (the same model, initial weights, data, AdamW(lr=1e-3, weight_decay=0.01), constant
lr, no clipping, a local record of the loss every 10 steps, for every runner):

* ``mlp``: MLP 32→64→10, batch 64, no validation;
* ``cnn``: a small CNN on 3×32×32 images, batch 32, validation and a checkpoint every epoch;
* ``lm``: a tiny causal transformer LM on dict batches (``input_ids``, ``labels`` with padding
  as -100), a model whose ``forward(**batch)`` returns its loss.

Every model takes a dict batch and returns its loss, so each framework runs it its own way:
the hand-written loop and trainwire (an ``Objective`` that calls ``model(**batch)``; trainwire
at its defaults: run record, ``last.pt`` every epoch, the non-finite guard, the gradient
monitor) iterate a pre-built list of batches; Lightning iterates the same list; the HF
Trainer builds its own DataLoader over the same samples (that is how it is used). Each run is
a fresh process pinned to the same CPUs and thread count; runners are interleaved round by
round. steps/s is measured from the end of the first epoch to the end of the last (so
compilation and start-up are excluded and reported apart); start-up is from process spawn to
the end of the first optimizer step. Nothing is installed here: Lightning and the HF Trainer
run when ``lightning`` and ``transformers`` are importable, and are reported skipped otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNNERS = ("hand-written", "trainwire", "lightning", "hf-trainer")
WORKLOADS = {  # name: (batches an epoch, batch size, epochs, validation batches)
    "mlp": (100, 64, 5, 0),
    "cnn": (40, 32, 4, 8),
    "lm": (30, 16, 4, 0),
}
QUICK = {"mlp": (10, 64, 2, 0), "cnn": (4, 8, 2, 2), "lm": (4, 4, 2, 0)}


# -- the work -------------------------------------------------------------------------------------
def build(workload: str, sizes: tuple[int, int, int, int]):
    """The model (forward(**batch) -> loss) and the train and validation batches, the same in every process."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    per_epoch, batch, _, val = sizes
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)

    class Classifier(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x, labels):
            return F.cross_entropy(self.net(x), labels)

    class TinyLM(nn.Module):
        def __init__(self, vocab: int = 128, width: int = 64, length: int = 64) -> None:
            super().__init__()
            self.embed, self.position = nn.Embedding(vocab, width), nn.Parameter(torch.zeros(length, width))
            layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
            self.body, self.head = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(width, vocab)
            self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(length), persistent=False)

        def forward(self, input_ids, labels):
            n = input_ids.shape[1]
            hidden = self.body(self.embed(input_ids) + self.position[:n], mask=self.causal[:n, :n], is_causal=True)
            logits = self.head(hidden)[:, :-1]
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)

    def classification(shape: tuple[int, ...], n: int):
        return [{"x": torch.randn(batch, *shape, generator=g), "labels": torch.randint(0, 10, (batch,), generator=g)}
                for _ in range(n)]

    if workload == "mlp":
        model = Classifier(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)))
        return model, classification((32,), per_epoch), classification((32,), val)
    if workload == "cnn":
        net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                            nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
        return Classifier(net), classification((3, 32, 32), per_epoch), classification((3, 32, 32), val)

    def tokens(n: int):
        out = []
        for _ in range(n):
            ids = torch.randint(0, 128, (batch, 64), generator=g)
            lengths = torch.randint(32, 65, (batch,), generator=g)
            labels = ids.masked_fill(torch.arange(64) >= lengths[:, None], -100)
            out.append({"input_ids": ids, "labels": labels})
        return out

    return TinyLM(), tokens(per_epoch), tokens(val)


class Clock:
    """Wall time at the end of the first optimizer step and of every epoch."""

    def __init__(self) -> None:
        self.first_step: float | None = None
        self.epochs: list[float] = []

    def step(self) -> None:
        if self.first_step is None:
            self.first_step = time.time()

    def epoch(self) -> None:
        self.epochs.append(time.time())


def run_hand(model, train, val, epochs: int, out: Path, compile: bool, clock: Clock) -> None:
    import torch

    module = torch.compile(model) if compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    out.mkdir(parents=True, exist_ok=True)
    step = 0
    with open(out / "metrics.jsonl", "a") as record:
        for epoch in range(epochs):
            model.train()
            for batch in train:
                loss = module(**batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                clock.step()
                if step % 10 == 0:
                    record.write(json.dumps({"step": step, "loss": loss.item()}) + "\n")
                    record.flush()
            if val:
                model.eval()
                with torch.no_grad():
                    val_loss = sum(module(**batch).item() for batch in val) / len(val)
                record.write(json.dumps({"epoch": epoch, "val_loss": val_loss}) + "\n")
                tmp = out / "last.pt.tmp"
                with open(tmp, "wb") as handle:
                    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, out / "last.pt")
            clock.epoch()


def run_trainwire(model, train, val, epochs: int, out: Path, compile: bool, clock: Clock) -> None:
    import functools

    import torch

    from trainwire import JsonlSink, Trainer, TrainerSettings
    from trainwire.checkpointing.store import LocalCheckpointStore
    from trainwire.policies.objectives import Objective

    class ModelLoss(Objective):
        """The model computes its own loss from the batch (``forward(**batch)``), as Hugging Face models do."""

        def training_loss(self, model, batch):
            return model(**batch)

        def evaluate(self, model, batches, reduce=None):
            losses = [model(**batch) for batch in batches]
            return {"loss": torch.stack(losses).mean().item()}

    class Timing:
        def on_batch_end(self, state, loss):
            clock.step()

        def on_epoch_end(self, state, metrics):
            clock.epoch()

    settings = TrainerSettings(max_epochs=epochs, device="cpu", compile=compile)
    trainer = Trainer(objective=ModelLoss(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01),
                      settings=settings, sink=JsonlSink(out), checkpoints=LocalCheckpointStore(out / "checkpoints"),
                      hooks=[Timing()])
    trainer.fit(model, train, val or None)


def run_lightning(model, train, val, epochs: int, out: Path, compile: bool, clock: Clock) -> None:
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, index):
            loss = self.model(**batch)
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch, index):
            self.log("val/loss", self.model(**batch))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.01)

    class Timing(L.Callback):
        def on_train_batch_end(self, *args):
            clock.step()

        def on_train_epoch_end(self, *args):
            clock.epoch()

    class Batches:
        """The same pre-built batches as one iterable (Lightning reads a plain list as several loaders)."""

        def __init__(self, items) -> None:
            self.items = items

        def __iter__(self):
            return iter(self.items)

        def __len__(self) -> int:
            return len(self.items)

    module = Module()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=CSVLogger(out), log_every_n_steps=10,
                        enable_checkpointing=bool(val), enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=out, callbacks=[Timing()])
    if compile:  # the model inside, as the other runners do (Dynamo cannot trace LightningModule.log)
        module.model = torch.compile(model)
    trainer.fit(module, Batches(train), Batches(val) if val else None)


def run_hf(model, train, val, epochs: int, out: Path, compile: bool, clock: Clock) -> None:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, num_items_in_batch=None, **batch):  # the HF Trainer passes the count; the loss is a mean
            return {"loss": self.model(**batch)}

    class Samples(torch.utils.data.Dataset):
        def __init__(self, batches) -> None:
            self.items = [{key: value[i] for key, value in b.items()} for b in batches for i in range(len(b["labels"]))]

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, index):
            return self.items[index]

    class Timing(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            clock.step()

        def on_epoch_end(self, *args, **kwargs):
            clock.epoch()

    size = len(train[0]["labels"])
    args = TrainingArguments(
        output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=size, per_device_eval_batch_size=size,
        learning_rate=1e-3, weight_decay=0.01, lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=10,
        eval_strategy="epoch" if val else "no", save_strategy="epoch" if val else "no", report_to="none",
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0, torch_compile=compile,
        remove_unused_columns=False, prediction_loss_only=True, save_total_limit=1,
    )
    Trainer(model=Wrapped(), args=args, train_dataset=Samples(train), eval_dataset=Samples(val) if val else None,
            callbacks=[Timing()]).train()


RUN = {"hand-written": run_hand, "trainwire": run_trainwire, "lightning": run_lightning, "hf-trainer": run_hf}


def worker(runner: str, workload: str, compile: bool, sizes: tuple[int, int, int, int], threads: int, out: Path) -> dict:
    """One measured run in this process."""
    import resource

    import torch

    torch.set_num_threads(threads)
    model, train, val = build(workload, sizes)
    clock = Clock()
    RUN[runner](model, train, val, sizes[2], out, compile, clock)
    steps = sizes[0] * (len(clock.epochs) - 1)
    steady = clock.epochs[-1] - clock.epochs[0]
    return {"steps_per_s": steps / steady, "first_step": clock.first_step, "epochs": len(clock.epochs),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# -- the driver -----------------------------------------------------------------------------------
def available() -> tuple[list[str], list[str]]:
    import importlib.util

    runners, notes = ["hand-written", "trainwire"], []
    for runner, module in (("lightning", "lightning"), ("hf-trainer", "transformers")):
        if importlib.util.find_spec(module) is not None and (runner != "hf-trainer" or importlib.util.find_spec("accelerate")):
            runners.append(runner)
        else:
            notes.append(f"{runner}: `{module}` is not importable, so it was skipped "
                         "(pip install lightning transformers accelerate; see benchmarks/README.md).")
    return runners, notes


def measure(runner: str, workload: str, compile: bool, sizes, threads: int, cpus: list[int], tmp: Path,
            inline: bool = False) -> dict:
    """One run in a fresh process pinned to ``cpus`` (``inline``: in this one, for the smoke run)."""
    out = Path(tempfile.mkdtemp(prefix=f"{runner}-{workload}-", dir=tmp))
    if inline:
        spawned = time.time()
        result = worker(runner, workload, compile, sizes, threads, out)
        result["startup_s"] = result.pop("first_step") - spawned
        return result
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="ignore")
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", runner, workload, "--sizes",
               ",".join(map(str, sizes)), "--threads", str(threads), "--out", str(out), *(["--compile"] if compile else [])]
    spawned = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800,
                          preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    if done.returncode != 0:
        raise RuntimeError(f"{runner} on {workload} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["startup_s"] = result.pop("first_step") - spawned
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round, eager only: a smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; 1 with --quick)")
    parser.add_argument("--compile-rounds", type=int, default=1, help="rounds of the compiled rows (default 1)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    parser.add_argument("--only", choices=tuple(WORKLOADS), action="append", help="run only these workloads")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run (default 1)")
    parser.add_argument("--worker", nargs=2, metavar=("RUNNER", "WORKLOAD"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(*args.worker, args.compile, tuple(int(v) for v in args.sizes.split(",")), args.threads, args.out)
        print(json.dumps(result))
        return 0

    sys.path.insert(0, str(HERE))
    from _common import machine

    runners, notes = available()
    rounds = args.rounds or (1 if args.quick else 3)
    table = QUICK if args.quick else WORKLOADS
    workloads = args.only or list(table)
    cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    modes = [False] if args.quick or args.no_compile else [False, True]
    if args.quick:
        notes.append("QUICK SMOKE RUN: tiny sizes, one round, no compiled rows, every run in this process (start-up "
                     "excludes imports; peak RSS is this process's); the numbers mean nothing.")
    results: dict[tuple[str, bool, str], list[dict]] = {}
    failures: dict[tuple[str, bool, str], str] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trainwire-peers-") as tmp_name:
        for compile in modes:
            for round_ in range(args.compile_rounds if compile else rounds):
                for workload in workloads:
                    order = runners[round_ % len(runners):] + runners[: round_ % len(runners)]  # rotate who goes first
                    for runner in order:
                        print(f"[round {round_ + 1}] {workload}{' compiled' if compile else ''}: {runner}",
                              file=sys.stderr, flush=True)
                        try:
                            result = measure(runner, workload, compile, table[workload], args.threads, cpus,
                                             Path(tmp_name), inline=args.quick)
                        except Exception as error:  # noqa: BLE001 - one runner failing leaves the others' figures
                            failures[(workload, compile, runner)] = str(error).splitlines()[0]
                            print(f"  failed: {failures[(workload, compile, runner)]}", file=sys.stderr, flush=True)
                            continue
                        print(f"  {json.dumps(result)}", file=sys.stderr, flush=True)
                        results.setdefault((workload, compile, runner), []).append(result)
    elapsed = time.perf_counter() - started

    print(f"Machine: {machine()}; {args.threads} thread(s) per run, pinned to CPU {cpus}  ")
    print(f"Rounds: {rounds} eager" + (f", {args.compile_rounds} compiled" if True in modes else "")
          + "; medians over rounds; ratio = steps/s over the hand-written loop's (compiled rows: over the hand-written "
          "loop compiled).")
    print()
    print("| workload | runner | steps/s | ratio | start-up s | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|")
    for workload in workloads:
        for compile in modes:
            hand = results.get((workload, compile, "hand-written"))
            base = statistics.median(r["steps_per_s"] for r in hand) if hand else float("nan")
            for runner in runners:
                runs = results.get((workload, compile, runner))
                name = f"{workload}{' (compiled)' if compile else ''}"
                if not runs:
                    print(f"| {name} | {runner} | failed: {failures.get((workload, compile, runner), '?')} | | | |")
                    continue
                sps = statistics.median(r["steps_per_s"] for r in runs)
                print(f"| {name} | {runner} | {sps:,.1f} | {sps / base:.3f} | "
                      f"{statistics.median(r['startup_s'] for r in runs):.1f} | "
                      f"{statistics.median(r['peak_rss_mib'] for r in runs):,.0f} |")
    print()
    sizes = "; ".join(f"{w}: {table[w][0]} steps × {table[w][2]} epochs, batch {table[w][1]}"
                      + (f", {table[w][3]} validation batches" if table[w][3] else "") for w in workloads)
    print(f"Sizes: {sizes}. steps/s from the end of epoch 1 to the end of the last epoch.")
    for note in notes:
        print(note)
    print(f"(ran in {elapsed:.0f} s; exit status 0 whatever the result: this is a benchmark, not a test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
