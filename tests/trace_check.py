"""Runs ``trainwire.containers.run`` with every external sink on (offline) and prints what it left behind.

Used by ``test_embedding.py`` in a fresh interpreter: ``python trace_check.py RUN_DIR``. Prints one
JSON object: for each item of the "no trace left" list, whether it differs from before the run.
``python trace_check.py --sequence ROOT REPS`` repeats issue 25's sequence instead, against a snapshot
taken before trainwire is imported, and prints one JSON list (see ``sequence``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import threading
import time
import warnings

import numpy
import torch


def snapshot() -> dict:
    root = logging.getLogger()
    signals = {}
    for signum in signal.valid_signals():
        try:
            signals[int(signum)] = signal.getsignal(signum)
        except (OSError, ValueError):
            pass
    return {
        "random": random.getstate(),
        "numpy": numpy.random.get_state(legacy=True),
        "torch": torch.get_rng_state(),
        "sys.excepthook": sys.excepthook,
        "sys.exit": sys.exit,
        "threading.excepthook": threading.excepthook,
        "os.environ": dict(os.environ),
        "warnings.filters": list(warnings.filters),
        "signals": signals,
        "root logging": (root.level, list(root.handlers), list(root.filters), root.disabled, logging.root.manager.disable),
        "torch threads": torch.get_num_threads(),
    }


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, tuple) and a and isinstance(a[1], numpy.ndarray):
        return a[0] == b[0] and numpy.array_equal(a[1], b[1]) and a[2:] == b[2:]
    return a == b


def changed(before: dict, after: dict) -> list[str]:
    return [key for key in before if not same(before[key], after[key])]


class Boom:
    """A hook that fails the run after its first epoch, with every sink started."""

    def on_epoch_end(self, state, metrics) -> None:
        raise RuntimeError("boom")


def main(run_dir: str) -> None:
    from dependency_injector import providers

    from trainwire.config import compose
    from trainwire.containers import build_container, run

    common = [f"run_dir={run_dir}", "sink=[wandb,tensorboard,mlflow]", "sink.wandb.mode=offline",
              "lr=constant", "data.batch_size=256", "progress=never",
              "trainer.max_epochs=1"]
    torch.set_num_threads(1)
    threads = set(threading.enumerate())
    report = {}
    cases = (("fresh", [], None), ("resumed", ["trainer.resume=auto"], None),
             ("raised", [f"run_dir={run_dir}-raised"], Boom()))
    for seed, (name, extra, hook) in enumerate(cases):
        # A different state before each run: resuming must not bring back the one saved with the checkpoint.
        random.seed(seed), numpy.random.seed(seed + 10), torch.manual_seed(seed + 20)
        container = build_container(compose([*common, *extra]))
        if hook is not None:
            container.hooks.override(providers.List(providers.Object(hook)))
        before = snapshot()
        try:
            outcome = run(container).stop_reason
        except RuntimeError as error:
            outcome = str(error)
        after = snapshot()
        time.sleep(0.2)  # a thread that was about to end has ended
        left = sorted(t.name for t in set(threading.enumerate()) - threads if t.is_alive())
        report[name] = {"outcome": outcome, "changed": changed(before, after), "threads": left}
    print(json.dumps(report))


def sequence(root: str, reps: int) -> None:
    """Issue 25: a fresh run, its resume (which restores the RNG states of its checkpoint) and a run in a
    thread, joined, ``reps`` times; after each, what differs from the snapshot taken before trainwire was
    imported, and the threads left alive. The threaded run shows a progress bar (tqdm starts threads)."""
    random.seed(1), numpy.random.seed(2), torch.manual_seed(3)  # not the states a run's seed gives
    threads = set(threading.enumerate())
    before = snapshot()
    from trainwire.config import compose
    from trainwire.containers import run

    tiny = ["trainer.max_epochs=2", "data.train_samples=128", "data.batch_size=64"]
    fresh, resumed = compose([*tiny, "progress=never"]), compose([*tiny, "progress=never", "trainer.resume=auto"])
    threaded = compose([*tiny, "progress=always"])  # composed once each (Hydra is slow), given a folder below

    def into(cfg, run_dir: str):
        cfg = cfg.copy()
        cfg.run_dir = run_dir
        return cfg

    report = []
    for rep in range(reps):
        run(into(fresh, f"{root}/{rep}"))
        run(into(resumed, f"{root}/{rep}"))
        thread = threading.Thread(target=run, args=(into(threaded, f"{root}/{rep}-threaded"),))
        thread.start()
        thread.join()
        left = sorted(t.name for t in set(threading.enumerate()) - threads if t.is_alive())
        report.append({"changed": changed(before, snapshot()), "threads": left})
    print(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1] == "--sequence":
        sequence(sys.argv[2], int(sys.argv[3]))
    else:
        main(sys.argv[1])
