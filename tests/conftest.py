"""What many test files share: the tiny task, the model and Trainer builders, and the CLI runners.

Under pytest-xdist (the README's command runs ``-n logical``) each worker is one process: it runs torch
on one thread, and so do the processes the tests start, because two workers' threads contending for
2 cores make tiny models several times slower. The modules in ``SHARED_FIXTURES`` build an expensive
module fixture (a reference run, a first compile): each runs whole on one worker, so it is built once.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import trainwire as package
from trainwire import Classification, Trainer, TrainerSettings


def blobs(n: int = 256, features: int = 8, classes: int = 3, seed: int = 0):
    """Separable Gaussian blobs: a small classification task that trains in milliseconds."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, features, generator=g)
    return x, y


def batches(x, y, size: int):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


@pytest.fixture
def task():
    x, y = blobs()
    return batches(x[:192], y[:192], 16), batches(x[192:], y[192:], 32)


def make_model(seed: int = 0, features: int = 8, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))


def nonfinite_policy(name: str):
    """The ``nonfinite=<name>`` option, built with its defaults (as the container builds it)."""
    from trainwire import registry

    return registry.build("nonfinite", {"type": name})


def make_trainer(**overrides) -> Trainer:
    settings = overrides.pop("settings", None) or TrainerSettings(max_epochs=3, device="cpu", log_every_n_steps=1)
    return Trainer(
        objective=overrides.pop("objective", Classification()),
        optimizer=overrides.pop("optimizer", functools.partial(torch.optim.SGD, lr=0.1)),
        settings=settings,
        **overrides,
    )


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread for the session, here and in every process a test starts: tiny models gain
    nothing from more, and on a shared 2-core machine two threads per process contend and run several
    times slower."""
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if omp is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = omp


BIN = Path(sys.executable).parent
TRAINWIRE = str(BIN / "trainwire")  # the console script, as a user runs it
TORCHRUN = str(BIN / "torchrun")


def clean_env(*drop: str, **extra: str) -> dict[str, str]:
    """This process's environment for a child: without ``WANDB_*`` and ``HYDRA_*`` (nor the prefixes in ``drop``),
    on one torch thread, then ``extra`` on top.

    A developer's own W&B or Hydra settings must not steer a test run.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_", *drop))}
    return {**env, "OMP_NUM_THREADS": "1", **extra}  # one thread: see the module docstring


def talk(stderr: str) -> list[str]:
    """The lines of the CLI's stderr that are not log records: its ``trainwire: error:`` line, Python's warnings.

    The CLI logs on stderr (ADR 0035), one JSON object a line when stderr is not a terminal.
    """
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]


def trainwire(*args: str, cwd, env: dict[str, str] | None = None, module: bool = False, fresh: bool = False,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs ``trainwire *args`` to its end in a process of its own; text output captured.

    The process is forked from this worker's zygote (see ``zygote.py``: the same ``main``, without
    paying the imports again), unless ``fresh`` asks for the console script itself, or ``module``
    for ``python -m trainwire``: for tests about how the command starts or what it imports.
    (``module`` alone runs in the zygote as ``python -m`` would: the working directory first on ``sys.path``.)
    The timeout is generous: it bounds a hung run, not a slow one on a loaded machine.
    """
    env = clean_env() if env is None else env
    if fresh:
        command = [sys.executable, "-m", "trainwire"] if module else [TRAINWIRE]
        return subprocess.run([*command, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    process = _ZYGOTE.start(list(args), cwd=str(cwd), env=env, module=module, stdout=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return subprocess.CompletedProcess([TRAINWIRE, *args], process.returncode, out, err)


def start_trainwire(run_dir: Path, *args: str) -> ForkedProcess:
    """Starts ``trainwire train hydra.run.dir=<run_dir> *args`` in ``run_dir``'s parent; stderr is piped.

    A child of the zygote, with ``subprocess.Popen``'s face: ``pid``, ``poll``, ``wait``, ``communicate``,
    ``send_signal``, ``kill``, ``returncode``, ``stderr``."""
    return start_cli("train", f"hydra.run.dir={run_dir}", *args, cwd=run_dir.parent)


def start_cli(*args: str, cwd: Path) -> ForkedProcess:
    """Starts ``trainwire *args`` in ``cwd`` (a zygote's child, as ``start_trainwire``); stderr is piped."""
    return _ZYGOTE.start(list(args), cwd=str(cwd), env=clean_env(), module=False, stdout=False)


class ForkedProcess:
    """A zygote's child, seen as ``subprocess.Popen`` sees its own (text pipes; stdin is /dev/null)."""

    def __init__(self, zygote: _Zygote, key: str, args: list[str], stdout: bool) -> None:
        self._zygote, self._key, self.args = zygote, key, args
        null = os.open(os.devnull, os.O_RDWR)
        out_read, out_write = os.pipe() if stdout else (None, os.dup(null))
        err_read, err_write = os.pipe()
        self.stdout = open(out_read, encoding="utf-8", errors="replace") if stdout else None  # noqa: SIM115
        self.stderr = open(err_read, encoding="utf-8", errors="replace")  # noqa: SIM115
        self._fds = [null, out_write, err_write]  # the child's 0, 1, 2: closed here once it has them

    def _started(self, pid: int) -> None:
        self.pid = pid
        for fd in self._fds:
            os.close(fd)

    @property
    def returncode(self) -> int | None:
        return self._zygote.ended.get(self._key)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self._zygote.changed:
            if not self._zygote.changed.wait_for(lambda: self.returncode is not None, timeout):
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str]:
        """Everything the child wrote, read to the end of its pipes (as Popen: until every writer closed them)."""
        texts: dict[str, str] = {}
        readers = [threading.Thread(target=lambda n=name, f=file: texts.__setitem__(n, f.read()), daemon=True)
                   for name, file in (("out", self.stdout), ("err", self.stderr)) if file is not None]
        for reader in readers:
            reader.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return texts.get("out"), texts["err"]

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Zygote:
    """This worker's zygote (``zygote.py``), started at its first request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._channel: socket.socket | None = None
        self._waiting: dict[str, ForkedProcess] = {}
        self.ended: dict[str, int] = {}
        self.changed = threading.Condition()
        self._count = 0

    def start(self, args: list[str], cwd: str, env: dict[str, str], module: bool, stdout: bool) -> ForkedProcess:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._spawn()
            self._count += 1
            key = str(self._count)
            process = ForkedProcess(self, key, [TRAINWIRE, *args], stdout)
            argv0 = os.path.join(os.path.dirname(package.__file__), "__main__.py") if module else TRAINWIRE
            request = {"id": key, "args": args, "cwd": cwd, "env": env, "module": module, "argv0": argv0}
            with self.changed:
                self._waiting[key] = process
            socket.send_fds(self._channel, [json.dumps(request).encode()], process._fds)
            with self.changed:
                self.changed.wait_for(lambda: key not in self._waiting)
        return process

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("zygote.py")),
                                          str(theirs.fileno())], pass_fds=[theirs.fileno()], env=clean_env(),
                                         cwd=Path(__file__).parent, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL)
        theirs.close()
        self._channel = ours
        threading.Thread(target=self._listen, args=(ours,), name="zygote-replies", daemon=True).start()

    def _listen(self, channel: socket.socket) -> None:
        while message := channel.recv(1 << 16):
            reply = json.loads(message)
            with self.changed:
                if "pid" in reply:
                    self._waiting.pop(reply["id"])._started(reply["pid"])
                else:
                    self.ended[reply["id"]] = reply["returncode"]
                self.changed.notify_all()


_ZYGOTE = _Zygote()


# Modules whose tests read one expensive module-scoped fixture; every other test is scheduled on its own.
SHARED_FIXTURES = {
    "tests/test_compare.py",  # the 2×2 sweep
    "tests/test_compile.py",  # the first torch.compile of the model
    "tests/test_distributed.py",  # the 2-process reference run
    "tests/test_kill.py",  # the uninterrupted reference runs
    "tests/test_plots.py",  # the two runs
    "tests/test_sinks.py",  # the run with TensorBoard and MLflow on
    "tests/test_staged.py",  # the pre-trained encoder
}


def pytest_collection_modifyitems(config, items):
    """The longest work first: the shared-fixture modules, then the other slow tests, then the rest.

    xdist hands the work out in collection order; with the long ones first, the two workers end
    together on short tests instead of one waiting for the other's last kill/resume chain.
    """
    def weight(item) -> int:
        if item.nodeid.split("::", 1)[0] in SHARED_FIXTURES:
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=weight)  # stable: the order within each weight is the files' own


def pytest_xdist_make_scheduler(config, log):
    """Under ``-n`` (``--dist load``, the default): the modules of ``SHARED_FIXTURES`` whole, every other test alone.

    xdist's own ``loadgroup`` marks do not reach the scheduler under pytest 9.2 (the worker can no
    longer rename a test's node id), so the grouping is made here, where xdist asks for a scheduler.
    """
    if config.getvalue("dist") != "load":
        return None  # an explicit --dist: xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in SHARED_FIXTURES else nodeid

    return SharedFixtureScheduling(config, log)
