"""A process that has imported trainwire's stack once and forks a child for each CLI run a test asks for.

Most CLI tests spend about 2 s of CPU importing torch, Hydra and the container before the command
does anything. A pytest worker starts one of these per session; each request forks a child that is
a ``trainwire`` process in all that the tests look at: its own pid, working directory, environment,
stdin/stdout/stderr, signal handlers and exit code, running the same ``main`` as the console script.
What it does not show is the import itself: a test about what the command imports, or how it
starts, runs the console script instead (``conftest.trainwire(..., fresh=True)``).

Fork-safe because nothing here has run a torch op or started a thread: the pools start in the child.
Requests and replies are JSON lines on stdin/stdout.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile


def _child(request: dict, out: int, err: int) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
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


def _serve() -> None:
    sys.path.pop(0)  # this file's folder: the tests' own modules must not be importable by the runs
    import hydra  # noqa: F401
    import torch  # noqa: F401

    import trainwire.cli.main
    import trainwire.cli.train
    import trainwire.config
    import trainwire.containers  # noqa: F401

    replies = os.fdopen(os.dup(1), "w")
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            pid = os.fork()
            if pid == 0:
                _child(request, out.fileno(), err.fileno())
            replies.write(json.dumps({"pid": pid}) + "\n")
            replies.flush()
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            replies.write(json.dumps({"returncode": code, "stdout": out.read().decode(errors="replace"),
                                      "stderr": err.read().decode(errors="replace")}) + "\n")
            replies.flush()


def _die_with_parent() -> None:
    """Linux's parent-death signal: a worker that dies leaves no zygote holding the session's pipes."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker's Ctrl-C is the test session's, not ours
    _die_with_parent()
    _serve()
