"""A training run whose background checkpoint writes are cut short or fail, run as its own process by test_kill.

    python background_saves.py kill DIR POINT ACKS   # os._exit(9) at the POINT-th step of the store's protocol
    python background_saves.py full DIR              # DIR is a small tmpfs: a later save meets ENOSPC

The hook runs in the writer's thread, so the process dies (or the disk fills) while the loop
trains on in the main thread. ``kill`` appends each committed step to ACKS first.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import torch
import xxhash

from trainwire import Classification, Trainer, TrainerSettings
from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.errors import CheckpointError
from trainwire.policies.cadence import Cadence


def job(directory: Path, hook, hooks=()) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 256, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(30)]
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    settings = TrainerSettings(max_epochs=2, device="cpu", resume="auto")
    Trainer(objective=Classification(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), settings=settings,
            checkpoints=LocalCheckpointStore(directory, hook=hook), hooks=hooks,
            checkpoint_policy=Cadence(every_n_steps=2)).fit(model, data)


def killed(directory: Path, point: int, acks: Path) -> None:
    reached = iter(range(1 << 30))

    def hook(name: str) -> None:
        if name == "committed":
            with open(acks, "a") as handle:
                handle.write(f"{torch.load(directory / 'last.pt', weights_only=True)['loop']['step']}\n")
        if next(reached) == point:
            os._exit(9)

    job(directory, hook)


def full(directory: Path) -> None:
    kept: dict[str, bytes] = {}

    def committed_and_idle() -> tuple[bytes, bytes] | None:
        """(last.pt, manifest) once a save is committed and none is in flight; else None."""
        if not (directory / "manifest.json").exists():
            return None
        manifest = (directory / "manifest.json").read_bytes()
        entry, last = json.loads(manifest)["files"].get("last.pt"), (directory / "last.pt").read_bytes()
        if json.loads(manifest).get("pending") or entry is None or xxhash.xxh3_128(last).hexdigest() != entry["xxh3_128"]:
            return None
        return last, manifest

    class FillAfterFirstSave:
        def on_batch_end(self, state, loss) -> None:
            if "last" in kept or state.step < 3:
                return
            # The loop's thread waits here for the writer's thread to commit what it has in flight.
            deadline = time.monotonic() + 300
            while (found := committed_and_idle()) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            kept["last"], kept["manifest"] = found
            free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
            with open(directory / "filler", "wb") as handle:  # room for half a checkpoint: the next one fails
                handle.write(bytes(max(free - len(kept["last"]) // 2, 0)))

    try:
        job(directory, None, hooks=[FillAfterFirstSave()])
    except CheckpointError as error:
        print(f"CheckpointError: {error}")
    else:
        print("no error")
    print("last.pt unchanged:", (directory / "last.pt").read_bytes() == kept["last"])
    # What the manifest commits is unchanged (a failed save may rewrite the file to drop its own pending entry).
    committed = json.loads((directory / "manifest.json").read_bytes())["files"]
    print("manifest unchanged:", committed == json.loads(kept["manifest"])["files"])
    store = LocalCheckpointStore(directory)
    name = store.latest()
    print("loads:", name, xxhash.xxh3_128(kept["last"]).hexdigest()[:8], store.load(name)["loop"]["step"])


if __name__ == "__main__":
    if sys.argv[1] == "kill":
        killed(Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    else:
        full(Path(sys.argv[2]))
