"""One run per output_dir, and what a run's exit meant, readable whatever launched it.

output_dir/run.lock is held by rank 0 for the run's life. It is taken by writing a file of our own
(host, pid, start time, command) and hard-linking it to run.lock: link(2) fails if run.lock exists,
and it is atomic on local file systems and on NFS, where O_CREAT | O_EXCL was not always (open(2),
"O_EXCL"; the link-count check it recommends is made too). A second run into the folder is refused
with one line naming the holder. A holder that died without releasing (SIGKILL, a lost node) does
not block the next run: the lock is stale when its holder's process is gone (same host) or its
heartbeat, the file's mtime touched every HEARTBEAT_S by a thread, is older than STALE_S (any host;
so a requeued job on another node waits out at most STALE_S after a node was lost).

On release the holder writes output_dir/exit.json: the exit code and its reason (0 finished,
75 stopped by a signal after saving: re-run to resume, 2 bad input, 3 diverged, 4 host sync, 1 a
crash). torchrun reports its own code (1 for any worker's non-zero exit, and for a SIGTERM it
received itself), so a requeueing launcher that starts torchrun reads exit.json instead.
"""
import json
import os
import socket
import sys
import threading
import time

from common.config import InputError

LOCK_NAME = "run.lock"
EXIT_NAME = "exit.json"
HEARTBEAT_S = 30.0
STALE_S = 300.0


class RunLocked(InputError):
    """output_dir is held by another live run. The message names the holder."""


def _read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


def holder_line(info, path):
    if not info:
        return f"an unreadable lock {path}"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"host {info.get('host')}, pid {info.get('pid')}, started {started} (lock {path})"


class RunLock:
    """`acquire()` or RunLocked; `release(code, reason)` writes exit.json and removes the lock."""

    held = None   # the lock this process holds, for common/run.py's cli

    def __init__(self, output_dir):
        self.dir = output_dir
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                     "argv": sys.argv}
        self._stop = threading.Event()
        self._thread = None

    def stale(self, info):
        """Whether the lock described by `info` (None: unreadable) belongs to no live run."""
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return True
        if age > STALE_S:
            return True
        if info and info.get("host") == self.info["host"]:
            pid = int(info.get("pid", -1))
            # this very process (a script's main called again in one interpreter) does not block itself
            return pid == os.getpid() or not _alive(pid)
        return False

    def acquire(self):
        if RunLock.held is not None:   # main called again in-process: the earlier run has ended
            RunLock.held._stop.set()
            RunLock.held = None
        os.makedirs(self.dir, exist_ok=True)
        mine = f"{self.path}.{self.info['host']}.{self.info['pid']}"
        with open(mine, "w") as f:
            json.dump(self.info, f)
            f.flush()
            os.fsync(f.fileno())
        RunLock.held = self   # from here a stop signal ends in release(), which acts only if the lock is ours
        try:
            for _ in range(5):
                try:
                    os.link(mine, self.path)
                except FileExistsError:
                    pass
                if os.stat(mine).st_nlink == 2:   # ours (NFS: link may report failure after succeeding)
                    break
                holder = _read(self.path)
                if not self.stale(holder):
                    raise RunLocked(f"{self.dir} is in use by another run: {holder_line(holder, self.path)}; "
                                    f"wait for it to end, stop it, or use another output_dir")
                self._break(holder)
            else:
                raise RunLocked(f"{self.dir}: could not take {self.path} (other runs are racing for it)")
        except BaseException:
            if not self.owned():
                RunLock.held = None
            raise
        finally:
            os.remove(mine)
        try:
            os.remove(os.path.join(self.dir, EXIT_NAME))   # the previous run's; this one is running
        except FileNotFoundError:
            pass
        self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _break(self, holder):
        """Move a stale lock aside. If what was moved is not the lock judged stale (another run
        took the folder in between), put it back and let the next attempt read the new holder."""
        aside = f"{self.path}.stale.{self.info['host']}.{self.info['pid']}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read(aside) != holder:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        os.remove(aside)

    def _heartbeat(self):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def owned(self):
        return _read(self.path) == self.info

    def release(self, code, reason, **extra):
        """Write exit.json (atomically) and remove the lock, if this process still holds it."""
        if RunLock.held is not self:
            return
        RunLock.held = None
        self._stop.set()
        if not self.owned():   # stopped before the lock was taken: nothing here is ours
            return
        try:
            record = dict(code=code, reason=reason, host=self.info["host"], pid=self.info["pid"],
                          ended=time.time(), **extra)
            tmp = os.path.join(self.dir, f"{EXIT_NAME}.tmp.{os.getpid()}")
            with open(tmp, "w") as f:
                json.dump(record, f, indent=1)
            os.replace(tmp, os.path.join(self.dir, EXIT_NAME))
        except OSError:
            pass   # a full disk or a removed folder: the exit code still says it
        try:
            os.remove(self.path)
        except OSError:
            pass


def read_exit(output_dir):
    """The exit record a finished or stopped run left in output_dir (None: none, or running)."""
    return _read(os.path.join(output_dir, EXIT_NAME))
