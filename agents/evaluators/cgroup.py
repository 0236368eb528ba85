"""A cgroup per sandbox run: one memory limit and one process count for the whole process
tree, and a way to kill every process of the run. Standard library only.

Two layouts are found, never assumed:

* cgroup v2, in a directory the operator delegated to the worker (``code_sandbox_cgroup``):
  the run's cgroup is a child with ``memory.max``, ``memory.swap.max`` and ``pids.max``, and
  ``cgroup.kill`` ends it;
* cgroup v1 (hybrid hosts, containers run as root): a child of the worker's own cgroup in the
  ``memory`` and ``pids`` hierarchies where both are writable.

``open_run`` returns None where neither is usable.
"""
from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

V1_ROOT = Path("/sys/fs/cgroup")
_ids = itertools.count()


class RunCgroup:
    """The cgroup(s) of one run: ``join`` (in the child, before exec), ``kill``, ``remove``."""

    def __init__(self, dirs: list[Path], v2: bool) -> None:
        self.dirs, self.v2 = dirs, v2

    def join(self) -> None:
        pid = str(os.getpid())
        for d in self.dirs:
            (d / "cgroup.procs").write_text(pid)

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                out |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return out

    def kill(self) -> None:
        """SIGKILL every process in the run's cgroup until none is left (a fork racing the
        kill lands in the same cgroup and is caught by the next pass)."""
        if self.v2 and (self.dirs[0] / "cgroup.kill").exists():
            (self.dirs[0] / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + 5
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def oom_killed(self) -> bool:
        for d in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                try:
                    fields = dict(line.split() for line in (d / name).read_text().splitlines())
                except (OSError, ValueError):
                    continue
                if int(fields.get("oom_kill", 0)) > 0:
                    return True
        return False

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy: the last process is still being reaped
                    time.sleep(0.01)


def _v1_own(controller: str) -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return V1_ROOT / controller / path.lstrip("/")
    return None


def _make(parent: Path, name: str, values: dict[str, str], optional: dict[str, str]) -> Path:
    """A child cgroup with ``values`` set (each must exist: a missing controller is an
    OSError) and ``optional`` set where the kernel has them (swap accounting)."""
    d = parent / name
    d.mkdir()
    for key, value in values.items():
        (d / key).write_text(value)
        if (d / key).read_text().split()[0] != value:
            raise OSError(f"{d / key} did not take {value}")
    for key, value in optional.items():
        if (d / key).exists():
            (d / key).write_text(value)
    return d


def open_run(memory_mb: int, nproc: int, delegated: str = "") -> RunCgroup | None:
    """A fresh cgroup for one run limited to ``memory_mb`` and ``nproc`` tasks, or None where
    this worker cannot make one."""
    name = f"prefstream-{os.getpid()}-{next(_ids)}"
    mem = str(memory_mb * 1024 * 1024)
    made: list[Path] = []
    try:
        if delegated:
            made.append(_make(Path(delegated), name, {"memory.max": mem, "pids.max": str(nproc)},
                              {"memory.swap.max": "0"}))
            return RunCgroup(made, v2=True)
        memory, pids = _v1_own("memory"), _v1_own("pids")
        if memory is None or pids is None:
            return None
        made.append(_make(memory, name, {"memory.limit_in_bytes": mem}, {"memory.memsw.limit_in_bytes": mem}))
        made.append(_make(pids, name, {"pids.max": str(nproc)}, {}))
        return RunCgroup(made, v2=False)
    except OSError:
        RunCgroup(made, v2=bool(delegated)).remove()
        return None
