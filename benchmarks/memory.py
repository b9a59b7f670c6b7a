"""Peak memory: the maximum resident set size of a whole training process, trainwire against a hand-written loop.

Each program trains the default job — MLP 64→128→10 on the bundled digits, AdamW, warmup-cosine,
norm clipping, batch 64, validation every epoch — for ``--epochs`` epochs in a fresh process, and
reports ``ru_maxrss`` at its end:

* hand-written — torch only: the same tensors loaded from the package's data file (found without
  importing trainwire), the same loop written out, metrics appended to a JSON-lines file;
* trainwire, hand-built ``Trainer`` — ``import trainwire`` and a ``Trainer`` with a ``JsonlSink``;
* trainwire, Python API — ``run(compose(...))``: Hydra, OmegaConf and dependency-injector too,
  and the full run record with checkpoints.

Target: trainwire ≤ hand-written + 25 MiB. A benchmark, not a test: it prints PASS/MISS.

    python benchmarks/memory.py [--rounds 3] [--epochs 5] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import env, machine, median_spread, python, run, table

REPORT = """
import resource
print(f"MAXRSS_KIB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
"""

HANDWRITTEN = """
import importlib.util, json, os, sys, torch
from pathlib import Path
from torch import nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
epochs, out = int(sys.argv[2]), Path(sys.argv[1])
package = Path(importlib.util.find_spec("trainwire").submodule_search_locations[0])
raw = torch.load(package / "datasets" / "digits.pt", weights_only=True)
x, y = raw["x"].float() / 16.0, raw["y"].long()
order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
val_idx, train_idx = order[:round(len(x) * 0.2)], order[round(len(x) * 0.2):]
train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[train_idx], y[train_idx]), batch_size=64, shuffle=True)
val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[val_idx], y[val_idx]), batch_size=256)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
total = epochs * len(train)
scheduler = SequentialLR(optimizer, [LinearLR(optimizer, 1e-3, 1.0, total_iters=len(train)),
                                     CosineAnnealingLR(optimizer, total - len(train))], milestones=[len(train)])
out.mkdir(parents=True, exist_ok=True)
step = 0
with open(out / "metrics.jsonl", "a") as metrics:
    for epoch in range(epochs):
        model.train()
        for inputs, targets in train:
            loss = F.cross_entropy(model(inputs), targets)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step(); optimizer.zero_grad(set_to_none=True); scheduler.step(); step += 1
            if step % 10 == 0:
                metrics.write(json.dumps({"step": step, "train/loss": loss.item(), "train/grad_norm": norm.item()}) + "\\n")
        model.eval()
        with torch.no_grad():
            loss_sum = correct = 0.0
            for inputs, targets in val:
                logits = model(inputs)
                loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
                correct += (logits.argmax(-1) == targets).sum().item()
        metrics.write(json.dumps({"step": step, "epoch": epoch, "val/loss": loss_sum / len(val_idx)}) + "\\n")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, out / "last.pt")
""" + REPORT

HAND_BUILT = """
import functools, sys, torch
from trainwire import Classification, JsonlSink, LocalCheckpointStore, NormClipper, PatienceStopper, Trainer, TrainerSettings, WarmupCosine
from trainwire.data import digits
from trainwire.models import MLP
epochs, out = int(sys.argv[2]), sys.argv[1]
loaders = digits(batch_size=64, seed=0)
torch.manual_seed(0)
model = MLP(in_features=64, out_features=10, hidden=[128])
trainer = Trainer(objective=Classification(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01),
                  settings=TrainerSettings(max_epochs=epochs, device="cpu"), lr_policy=WarmupCosine(warmup_epochs=1),
                  stopping_policy=PatienceStopper(patience=50), gradient_policy=NormClipper(1.0), sink=JsonlSink(out),
                  checkpoints=LocalCheckpointStore(out + "/checkpoints"))
trainer.fit(model, loaders.train, loaders.val)
""" + REPORT

API = """
import sys
from trainwire.config import compose
from trainwire.containers import run
run(compose([f"run_dir={sys.argv[1]}", f"trainer.max_epochs={sys.argv[2]}", "lr.warmup_epochs=1"]))
""" + REPORT

PROGRAMS = {"hand-written loop (torch only)": HANDWRITTEN, "trainwire, hand-built Trainer": HAND_BUILT,
            "trainwire, Python API (Hydra + container)": API}


def once(source: str, workdir: Path, epochs: int, index: int) -> float:
    done = run([python(), "-c", source, str(workdir / f"run-{index}"), str(epochs)], cwd=workdir,
               env=env(OMP_NUM_THREADS="1"))
    kib = next(int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("MAXRSS_KIB"))
    return kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 round, 2 epochs")
    args = parser.parse_args()
    rounds, epochs = (1, 2) if args.quick else (args.rounds, args.epochs)
    peaks: dict[str, list[float]] = {name: [] for name in PROGRAMS}
    with tempfile.TemporaryDirectory() as folder:
        index = 0
        for _ in range(rounds):
            for name, source in PROGRAMS.items():
                peaks[name].append(once(source, Path(folder), epochs, index))
                index += 1
    base = median_spread(peaks["hand-written loop (torch only)"])[0]
    rows = []
    for name, values in peaks.items():
        median, low, high = median_spread(values)
        extra = median - base
        target = "" if name.startswith("hand") else f"≤ +25 MiB: {'PASS' if extra <= 25 else 'MISS'}"
        rows.append([name, f"{median:.1f}", f"{low:.1f}–{high:.1f}", f"{extra:+.1f}", f"{median / base:.2f}", target])
    print(f"### Peak memory (max RSS, MiB; {rounds} round(s), {epochs} epochs, OMP_NUM_THREADS=1)\n")
    print(f"Machine: {machine()}\n")
    print(table(["program", "median MiB", "min–max", "vs hand-written MiB", "ratio", "target"], rows))


if __name__ == "__main__":
    main()
