"""Run-directory locks: two kdbench processes on one results tree never run the same cell twice.

A lock is a file created with O_EXCL holding the owner's host, pid and start time. A lock left by
a dead process is stale and is taken over: on the same host when its process no longer exists
(its pid is gone, or now belongs to a process started at another time); from another host (a
shared filesystem) when it has not been refreshed for `stale_after` seconds (holders refresh it
every epoch).
"""

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

LOCK = ".lock"
STALE_AFTER = 2 * 3600.0


class RunLock:
    def __init__(self, directory: Path, stale_after: float = STALE_AFTER):
        self.path = Path(directory) / LOCK
        self.stale_after = stale_after
        self.held = False

    def try_acquire(self) -> bool:
        """Take the lock if it is free or stale; False if a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)      # a dead owner's lock: take it over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": process_start(os.getpid()),
                           "since": time.time()}, f)
            self.held = True
            return True
        return False

    def acquire(self, poll: float = 1.0, timeout: Optional[float] = None, on_wait=None) -> bool:
        """Wait for the lock (e.g. a teacher another process is training)."""
        start, told = time.monotonic(), False
        while not self.try_acquire():
            if timeout is not None and time.monotonic() - start > timeout:
                return False
            if on_wait is not None and not told:
                on_wait(self.owner())
                told = True
            time.sleep(poll)
        return True

    def held_elsewhere(self) -> bool:
        """Another live process holds the lock now (a snapshot: it may be released a moment later)."""
        return self.path.exists() and not self.held and not self._stale()

    def refresh(self):
        if self.held:
            os.utime(self.path)

    def release(self):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _stale(self) -> bool:
        owner = self.owner()
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            # A pid is reused (in containers our own pid is often an earlier run's): the owner is
            # alive only if the process with its pid started when the owner did.
            pid = owner["pid"]
            started = owner.get("started", process_start(pid))     # locks of kdbench <= 0.1 lack it
            return not _pid_alive(pid) or started != process_start(pid)
        try:
            return time.time() - self.path.stat().st_mtime > self.stale_after
        except FileNotFoundError:
            return True

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def process_start(pid: int) -> Optional[str]:
    """When process `pid` started (clock ticks since boot, from /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]    # field 22; the name in (...) may hold spaces


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True
