"""Running untrusted code: a subprocess with limits on time, CPU, memory, processes and file
size, and (where the machine allows) no network and no view of the host's files.

Two levels, chosen once per worker by :func:`containment` (probed, never assumed):

``namespaces``
    ``unshare`` puts the run in new network (no interface but a down loopback), mount, PID,
    IPC and UTS namespaces (plus a user namespace where the worker is not root);
    ``sandbox_child.py`` builds a throw-away read-only root (``/usr``, the Python install,
    the task files, a small writable ``/tmp``; no ``/etc``, ``/proc``, ``/home``, ``/work``),
    ``pivot_root``s into it, sets the limits and, running as real root, drops to a uid of
    its own (so RLIMIT_NPROC counts only that run's processes). The PID namespace means the
    whole tree dies with its first process.
``rlimits``
    no ``unshare`` available: a plain subprocess in a temporary directory with the same
    resource limits; the network is blocked only inside Python (``socket`` replaced before
    the code runs, which code that imports ``_socket`` gets round) and the file system is the
    worker's. The level is written on every result so a record says how it was checked.

Either way the wall-clock limit kills the process group.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("sandbox_child.py")
UID_BASE = 200_000  # run n gets uid UID_BASE + n % UID_SPAN: no such user exists on the host
UID_SPAN = 50_000
OUTPUT_LIMIT = 64 * 1024


# rlimits level only: Python's socket module refuses to make sockets, then the script runs
NETBLOCK = """
import runpy, socket, sys
def _refuse(*a, **k):
    raise PermissionError("network access is blocked in the sandbox")
socket.socket = socket.create_connection = socket.socketpair = socket.getaddrinfo = _refuse
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 256
    nproc: int = 16
    tmp_mb: int = 16


@dataclass(frozen=True)
class Result:
    returncode: int | None  # None: killed at the wall-clock limit
    stdout: str
    stderr: str
    timed_out: bool
    containment: str


_level: str | None = None
_level_lock = threading.Lock()
_counter = 0


def _python() -> str:
    """The base interpreter (not the venv): the sandbox sees the standard library only."""
    exe = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(exe if exe.exists() else Path(sys.executable).resolve())


def _unshare_argv() -> list[str] | None:
    exe = shutil.which("unshare")
    if exe is None:
        return None
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return [exe, *user, "--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child"]


def _next_uid() -> int | None:
    global _counter
    if os.geteuid() != 0:
        return None
    _counter += 1
    return UID_BASE + (os.getpid() * 7919 + _counter) % UID_SPAN


def _namespaced(argv: list[str], task: Path, limits: Limits) -> list[str] | None:
    prefix = _unshare_argv()
    if prefix is None:
        return None
    root = task.parent / "root"
    root.mkdir(exist_ok=True)
    cfg = {"root": str(root), "task": str(task), "ro": [sys.base_prefix], "argv": argv,
           "uid": _next_uid(), "cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb,
           "nproc": limits.nproc, "tmp_mb": limits.tmp_mb}
    return [*prefix, _python(), "-I", "-S", str(CHILD), json.dumps(cfg)]


def _rlimits(limits: Limits):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.nproc, limits.nproc))
        size = limits.tmp_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


async def _exec(cmd: list[str], stdin: bytes, cwd: Path, limits: Limits,
                preexec=None) -> tuple[int | None, bytes, bytes, bool]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=str(cwd), start_new_session=True,
        preexec_fn=preexec, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(cwd)})
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), limits.wall_s)
        return proc.returncode, out, err, False
    except asyncio.TimeoutError:
        return None, b"", b"", True
    finally:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()


async def run(files: dict[str, str], argv_in_task: list[str], stdin: bytes = b"",
              limits: Limits = Limits()) -> Result:
    """Run ``python -I -S -B`` on ``argv_in_task`` (paths relative to the task directory,
    which holds ``files``) inside the sandbox; ``stdin`` is fed to it."""
    level = await asyncio.to_thread(containment)
    with tempfile.TemporaryDirectory(prefix="prefstream-sandbox-") as tmp:
        task = Path(tmp) / "task"
        task.mkdir()
        for name, text in files.items():
            (task / name).write_text(text)
        os.chmod(tmp, 0o755)
        if level == "namespaces":
            argv = [_python(), "-I", "-S", "-B", *[f"/task/{a}" for a in argv_in_task]]
            cmd, preexec = _namespaced(argv, task, limits), None
        else:
            (task / "_netblock.py").write_text(NETBLOCK)
            cmd = [_python(), "-I", "-S", "-B", str(task / "_netblock.py"),
                   *[str(task / a) for a in argv_in_task]]
            preexec = _rlimits(limits)
        rc, out, err, timed_out = await _exec(cmd, stdin, task, limits, preexec)
    return Result(rc, out[:OUTPUT_LIMIT].decode(errors="replace"),
                  err[:OUTPUT_LIMIT].decode(errors="replace"), timed_out, level)


def containment() -> str:
    """``namespaces`` where an isolated run works on this machine, else ``rlimits``; probed
    once per process by running ``print(6 * 7)`` in the sandbox."""
    global _level
    with _level_lock:
        if _level is None:
            _level = _probe()
            log.info("code sandbox containment: %s", _level)
        return _level


def _probe() -> str:
    with tempfile.TemporaryDirectory(prefix="prefstream-sandbox-") as tmp:
        task = Path(tmp) / "task"
        task.mkdir()
        (task / "probe.py").write_text("print(6 * 7)\n")
        os.chmod(tmp, 0o755)
        cmd = _namespaced([_python(), "-I", "-S", "-B", "/task/probe.py"], task, Limits())
        if cmd is None:
            return "rlimits"
        import subprocess

        try:
            done = subprocess.run(cmd, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("namespaced sandbox unavailable (%s); falling back to rlimits only", e)
            return "rlimits"
        if done.returncode == 0 and done.stdout.strip() == b"42":
            return "namespaces"
        log.warning("namespaced sandbox unavailable (rc %s: %s); falling back to rlimits only",
                    done.returncode, done.stderr.decode(errors="replace")[-300:])
        return "rlimits"
