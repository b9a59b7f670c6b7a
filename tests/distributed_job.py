"""A Python-API job for ``torchrun`` (not a test module): trains through ``run`` with a stopper that disagrees by rank.

    torchrun --nproc_per_node=2 tests/distributed_job.py OUT_DIR [overrides ...]

Rank 0's stopper stops after epoch 1; every other rank's would never stop. Each rank writes
``OUT_DIR/rank<r>.json`` with what its own Trainer did.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trainwire.config import compose
from trainwire.containers import build_container, run
from trainwire.testing import RecordingHook, ScriptedStopper


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    container = build_container(compose(overrides))
    strategy = container.strategy()
    strategy.start()
    rank = strategy.rank
    stopper = ScriptedStopper(stop_at=1 if rank == 0 else 1000, monitor="val/loss")
    hook = RecordingHook()
    from dependency_injector import providers

    with container.stopping_policy.override(stopper), container.hooks.override(providers.List(providers.Object(hook))):
        result = run(container)
    record = {"rank": rank, "world_size": strategy.world_size, "epochs_completed": result.epochs_completed,
              "stop_reason": result.stop_reason, "steps": result.steps,
              "val_loss": [metrics["val/loss"] for metrics in stopper.seen],
              "epoch_ends": [epoch for event, epoch, _ in hook.events if event == "on_epoch_end"]}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
