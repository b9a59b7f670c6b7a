"""One run at a time in a folder: an advisory lock (``flock``) on ``<folder>/.lock``, held while a store is open.

The operating system drops the lock when the last descriptor of it closes, so ``kill -9`` of
the holder frees the folder with nothing to clean up. Processes forked from the holder
(DataLoader workers) share its descriptor, so the folder stays locked until they have gone too:
a run resumed in the folder cannot race the leftover workers of one that was killed. Who took
the lock, for the message that refuses a second one, is read from the kernel's ``/proc/locks``, so
taking the lock writes nothing: a run refused after it took the lock leaves the folder
byte-identical, ``.lock`` included. Where there is no ``/proc/locks`` (not Linux), the lock file
holds the pid instead. Inside a pid namespace (a container), the kernel leaves out of
``/proc/locks`` a lock whose taker has ended, so there the leftovers are found as the processes
that still have ``.lock`` open.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Any

from trainwire import logs
from trainwire.errors import CheckpointError

LOCK_FILE = ".lock"
LEFTOVER_WAIT_S = 60.0  # how long a folder locked only by what a dead process left behind is waited for
_POLL_S = 0.1

# (st_dev, st_ino) of a locked folder -> [descriptor, users]. The lock belongs to the process
# (an open file description), not to one store: a second store on the same folder in this process,
# or in a child forked from it, shares it instead of refusing itself.
_held: dict[tuple[int, int], list[int]] = {}


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


PROC_LOCKS = Path("/proc/locks")


def _holder(fd: int) -> int | None:
    """The pid of the process that took the flock on ``fd``'s file (it may have ended since), if known."""
    info = os.fstat(fd)
    file = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2146339 0 EOF"; a waiter's line has "->" after the number.
        for line in PROC_LOCKS.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == file:
                return int(fields[4]) if int(fields[4]) > 0 else None  # 0: a pid outside our namespace
    except (OSError, ValueError):
        pass
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None


def _sharers(fd: int) -> list[int]:
    """The other processes this one can see that have ``fd``'s file open (none where there is no ``/proc``)."""
    info = os.fstat(fd)
    found = []
    try:
        processes = [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()]
    except OSError:
        return found
    for pid in processes:
        if int(pid) == os.getpid():
            continue
        try:
            for link in os.scandir(f"/proc/{pid}/fd"):
                target = os.stat(link.path)
                if (target.st_dev, target.st_ino) == (info.st_dev, info.st_ino):
                    found.append(int(pid))
                    break
        except OSError:  # it ended, or is not ours to look at
            continue
    return found


class FolderLock:
    """Holds ``<directory>/.lock`` exclusively from ``acquire`` to ``release`` (or the process's end).

    ``acquire`` raises CheckpointError naming the folder and the process that holds it. When
    that process has ended but the lock is still held (by children it left, such as DataLoader
    workers, which end on their own within seconds of their parent), it waits up to
    ``leftover_wait_s`` first.
    """

    def __init__(self, directory: str | os.PathLike[str], *, leftover_wait_s: float = LEFTOVER_WAIT_S,
                 logger: Any = None) -> None:
        self.directory = Path(directory)
        self.leftover_wait_s = leftover_wait_s
        self.log = logger or logs.get_logger()
        self._key: tuple[int, int] | None = None

    @property
    def path(self) -> Path:
        return self.directory / LOCK_FILE

    def acquire(self) -> None:
        """Takes the lock (creating the folder if need be); a no-op when this object holds it already."""
        if self._key is not None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            info = os.stat(self.directory)
            key = (info.st_dev, info.st_ino)
            if key in _held:
                _held[key][1] += 1
                self._key = key
                return
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise CheckpointError(f"cannot lock {error.filename or self.path}: {error.strerror or error}") from None
        try:
            if not self._lock(fd):
                os.close(fd)
                return
            if not PROC_LOCKS.exists():  # nowhere else to find who holds it
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        _held[key] = [fd, 1]
        self._key = key

    def _lock(self, fd: int) -> bool:
        """Blocks out every other process; False where the file system has no locks (then nothing is held)."""
        deadline, unseen = None, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            except OSError as error:
                if error.errno in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                    self.log.warning("folder_lock_unavailable", path=str(self.path), error=error.strerror,
                                     consequence="two runs in this folder would not be kept apart")
                    return False
                raise CheckpointError(f"cannot lock {self.path}: {error.strerror or error}") from None
            holder = _holder(fd)
            # No holder found: in a container the kernel hides a lock whose taker has ended, so
            # processes seen with .lock open are what it left; none seen: the taker is out of sight.
            sharers = _sharers(fd) if holder is None else []
            if holder is None and not sharers and not unseen:
                unseen = True  # or the last of them ended since the flock above: try that once more
                continue
            if (holder is not None and _alive(holder)) or (holder is None and not sharers):
                raise CheckpointError(f"{self.directory} is in use by {f'process {holder}' if holder else 'another process'}"
                                      f" (it holds {self.path}); wait for it to end, or train in another run folder")
            ended = f"process {holder}" if holder is not None else "a process that has ended"
            if deadline is None:  # its taker is dead: what holds the lock now is what it left (forked workers)
                deadline = time.monotonic() + self.leftover_wait_s
                self.log.info("folder_lock_wait", path=str(self.path), ended_holder=holder, leftovers=sharers or None)
            elif time.monotonic() > deadline:
                raise CheckpointError(f"{self.directory} is still locked by processes that {ended} left "
                                      f"behind (DataLoader workers?) {self.leftover_wait_s:g} s after it ended; "
                                      f"end them, or train in another run folder")
            time.sleep(_POLL_S)

    def release(self) -> None:
        """Lets the lock go once every user of it in this process has released it."""
        key, self._key = self._key, None
        if key is None or key not in _held:
            return
        entry = _held[key]
        entry[1] -= 1
        if entry[1] <= 0:
            del _held[key]
            os.close(entry[0])  # closing the last descriptor drops the flock

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
