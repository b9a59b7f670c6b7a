"""A process that has imported trainwire's stack once and forks a child for each CLI run a test asks for.

Most CLI tests spend about 2 s of CPU importing torch, Hydra and the container before the command
does anything. A pytest worker starts one of these per session; each request forks a child that is
a ``trainwire`` process in all that the tests look at: its own pid (to signal or ``kill -9``), working
directory, environment, stdin/stdout/stderr (the test's own pipes, passed over the socket), signal
handlers and exit code, running the same ``main`` as the console script. What it does not show is
the import itself: a test about what the command imports, or how it starts, runs the console
script instead (``conftest.trainwire(..., fresh=True)``).

Fork-safe because nothing here has run a torch op or started a thread: the pools start in the child.
The protocol is one JSON object per datagram on a SEQPACKET socket: a request carries the child's
three standard streams as file descriptors; the replies are ``{"id", "pid"}`` at once and
``{"id", "returncode"}`` when the child ends.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys


def _child(request: dict, fds: list[int], channel: socket.socket) -> None:
    channel.close()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the process's own streams, as long as it lives)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    sys.argv = [request["argv0"], *request["args"]]
    # sys.path as the interpreter would have begun it: the script's folder (or, for ``python -m``,
    # the working directory), then PYTHONPATH's entries, then the rest.
    given = [entry for entry in request["env"].get("PYTHONPATH", "").split(os.pathsep) if entry]
    first = os.getcwd() if request["module"] else os.path.dirname(request["argv0"])
    sys.path[:1] = [first, *given]
    code = 0
    try:
        from trainwire.cli.main import main

        main(request["args"])
    except SystemExit as leaving:
        if isinstance(leaving.code, str):
            print(leaving.code, file=sys.stderr)
        code = leaving.code if isinstance(leaving.code, int) else (0 if leaving.code is None else 1)
    except BaseException:  # noqa: BLE001 (as the interpreter does for an uncaught exception)
        import traceback

        traceback.print_exc()
        code = 1
    try:
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _serve(channel: socket.socket) -> None:
    sys.path.pop(0)  # this file's folder: the tests' own modules must not be importable by the runs
    import hydra  # noqa: F401
    import torch  # noqa: F401

    import trainwire.cli.main  # noqa: F401
    import trainwire.cli.train  # noqa: F401
    import trainwire.config  # noqa: F401
    import trainwire.containers  # noqa: F401

    running: dict[int, str] = {}  # pid -> request id
    while True:
        ready, _, _ = select.select([channel], [], [], 0.02)
        if ready:
            message, fds, _, _ = socket.recv_fds(channel, 1 << 20, 3)
            if not message:
                return  # the worker is gone
            request = json.loads(message)
            pid = os.fork()
            if pid == 0:
                _child(request, fds, channel)
            for fd in fds:
                os.close(fd)
            running[pid] = request["id"]
            channel.send(json.dumps({"id": request["id"], "pid": pid}).encode())
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in running:
                channel.send(json.dumps({"id": running.pop(pid), "returncode": os.waitstatus_to_exitcode(status)})
                             .encode())


def _die_with_parent() -> None:
    """Linux's parent-death signal: a worker that dies leaves no zygote holding the session's pipes."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker's Ctrl-C is the test session's, not ours
    _die_with_parent()
    _serve(socket.socket(fileno=int(sys.argv[1])))
