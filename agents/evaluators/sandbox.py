"""Running untrusted code: Python in bubblewrap, with limits on time, CPU, memory, processes,
files and output, or not at all. Standard library only (``Unavailable`` is turned into the
stage's ``Blocked`` by the caller).

``bwrap`` (the default) runs ``bwrap --unshare-all`` (new user, PID, network, IPC, UTS and
cgroup namespaces; no network but a loopback of its own), ``--die-with-parent``,
``--new-session``, ``--cap-drop ALL``, ``--disable-userns`` (no nested user namespace, so no
capabilities to remount anything), ``--clearenv``. Its file system: a fresh ``/proc`` of the
new PID namespace, a minimal ``/dev``, a size-limited tmpfs at ``/tmp`` (the working
directory), the task files read-only at ``/task``, and read-only binds of only what the
interpreter needs (``/usr/lib``, ``/usr/lib64``, the Python installation the worker's
interpreter resolves to); no ``/etc``, ``/home``, ``/root`` files, no checkout, no host ``/tmp``.

Limits: CPU seconds, file size and open files per process (rlimits set inside the sandbox
before the code runs, hard limits the code cannot raise); the whole tree's memory and task
count by a cgroup of the run (``agents.evaluators.cgroup``) where the worker can make one;
else, for a non-root worker, by RLIMIT_NPROC (counted in the run's own user namespace) and
RLIMIT_AS set to the memory limit divided by that count, so the tree stays under the limit.
A root worker without a cgroup cannot limit the count (root's RLIMIT_NPROC is not enforced):
the sandbox is unavailable there. The wall-clock limit, the output cap (enforced while
reading) and the end of every run kill the process group, the cgroup's processes, and with
``--die-with-parent`` the PID namespace (whose end kills every process in it).

``rlimits-unsafe`` (only where the operator sets it) is a plain subprocess with rlimits: it
contains nothing — the code sees the worker's files, processes and network.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from agents.evaluators import cgroup

MODES = ("bwrap", "rlimits-unsafe")
MIN_PROCESS_MB = 64  # without a cgroup, each process gets at least this much address space
FIX = ("install bubblewrap (Debian: apt-get install bubblewrap) and run the worker where it can make "
       "user namespaces; a root worker also needs a writable memory+pids cgroup "
       "(PREFSTREAM_CODE_SANDBOX_CGROUP for a delegated cgroup v2 directory); or opt out of "
       "containment explicitly with PREFSTREAM_CODE_SANDBOX=rlimits-unsafe")

# Run first inside the sandbox: set the hard limits, then become the interpreter on the script.
LAUNCHER = ("import json, os, resource, sys\n"
            "for k, v in json.loads(sys.argv[1]).items():\n"
            "    resource.setrlimit(getattr(resource, k), (v, v))\n"
            "os.execv(sys.executable, [sys.executable, '-I', '-S', '-B', *sys.argv[2:]])\n")


class Unavailable(Exception):
    """No containment of the configured kind on this machine (``detail``; ``fix`` for the operator)."""

    def __init__(self, detail: str, fix: str = FIX) -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 256
    nproc: int = 16
    tmp_mb: int = 16
    output_kb: int = 1024  # stdout and stderr each; a run writing more is killed


@dataclass(frozen=True)
class Config:
    mode: str = "bwrap"  # "bwrap" | "rlimits-unsafe"
    python: str = ""  # "" = the worker's base interpreter (standard library only)
    bwrap: str = ""  # "" = found on PATH
    cgroup: str = ""  # a delegated cgroup v2 directory; "" = cgroup v1 where writable


@dataclass(frozen=True)
class Result:
    returncode: int | None  # None: killed (wall clock or output cap)
    stdout: bytes
    stderr: bytes
    timed_out: bool
    over_output: bool
    containment: str


def interpreter(cfg: Config) -> tuple[str, list[str]]:
    """The interpreter's real path and the paths it needs bound: its installation, and the
    resolved binary where that lies elsewhere (a venv's ``python`` is a link)."""
    if cfg.python:
        exe = Path(cfg.python).resolve()
        prefix = exe.parent.parent
    else:
        exe = (Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")
        exe = (exe if exe.exists() else Path(sys.executable)).resolve()
        prefix = Path(sys.base_prefix).resolve()
    binds = [str(prefix)] if prefix != Path("/usr") else []  # /usr: its lib/ is bound anyway
    if not binds or not exe.is_relative_to(prefix):
        binds.append(str(exe))
    return str(exe), binds


def bwrap_argv(cfg: Config, task: Path, limits: Limits, rlimits: dict[str, int], script: list[str]) -> list[str]:
    exe, binds = interpreter(cfg)
    bwrap = cfg.bwrap or shutil.which("bwrap")
    if not bwrap:
        raise Unavailable("bubblewrap (bwrap) is not installed")
    argv = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--cap-drop", "ALL", "--clearenv", "--setenv", "PATH", "/usr/bin",
            "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", "/tmp",
            "--proc", "/proc", "--dev", "/dev",
            "--size", str(limits.tmp_mb * 1024 * 1024), "--perms", "1777", "--tmpfs", "/tmp"]
    for host in ("/usr/lib", "/usr/lib64", "/lib", "/lib64"):  # the loader and shared libraries
        if Path(host).is_symlink():
            argv += ["--symlink", os.readlink(host), host]
        elif Path(host).is_dir():
            argv += ["--ro-bind", host, host]
    for path in binds:  # after the tmpfs: an interpreter under /tmp stays visible
        argv += ["--ro-bind", path, path]
    argv += ["--ro-bind", str(task), "/task", "--chdir", "/tmp", "--",
             exe, "-I", "-S", "-B", "-c", LAUNCHER, json.dumps(rlimits), *[f"/task/{s}" for s in script]]
    return argv


def _rlimits(limits: Limits, per_process_mb: int, nproc: int) -> dict[str, int]:
    mb = 1024 * 1024
    return {"RLIMIT_CPU": limits.cpu_s, "RLIMIT_AS": per_process_mb * mb, "RLIMIT_NPROC": nproc,
            "RLIMIT_FSIZE": limits.tmp_mb * mb, "RLIMIT_NOFILE": 64, "RLIMIT_CORE": 0}


def _plan(cfg: Config, limits: Limits) -> tuple[dict[str, int], cgroup.RunCgroup | None, str]:
    """The rlimits set inside, the run's cgroup (or None) and the containment label."""
    # counted besides the code's own processes: bwrap's init (in the run's user namespace) and,
    # in the cgroup, bwrap itself
    tree = cgroup.open_run(limits.memory_mb, limits.nproc + 2, cfg.cgroup)
    if tree is not None:
        return _rlimits(limits, limits.memory_mb, limits.nproc + 1), tree, "bwrap+cgroup"
    if os.geteuid() == 0:
        raise Unavailable("the worker runs as root and cannot make a memory+pids cgroup: the run's "
                          "process count and total memory could not be limited")
    nproc = max(1, min(limits.nproc, limits.memory_mb // MIN_PROCESS_MB))
    return _rlimits(limits, limits.memory_mb // nproc, nproc + 1), None, "bwrap+rlimits"


async def _read(stream: asyncio.StreamReader, buf: bytearray, cap: int, over: asyncio.Event) -> None:
    """Read into ``buf`` until EOF, keeping at most ``cap`` bytes: past it ``over`` is set (the
    run is then killed) and the rest is read and dropped, so EOF still comes."""
    while chunk := await stream.read(65536):
        if len(buf) + len(chunk) > cap:
            buf += chunk[:cap - len(buf)]
            over.set()
        else:
            buf += chunk


def _kill(proc, tree: cgroup.RunCgroup | None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if tree is not None:
        tree.kill()


async def _exec(cmd: list[str], cwd: Path, limits: Limits, label: str,
                tree: cgroup.RunCgroup | None = None, preexec=None) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=str(cwd), start_new_session=True, preexec_fn=preexec,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(cwd)})
    over, cap, out, err = asyncio.Event(), limits.output_kb * 1024, bytearray(), bytearray()
    reads = asyncio.gather(_read(proc.stdout, out, cap, over), _read(proc.stderr, err, cap, over),
                           proc.wait())
    stopper = asyncio.ensure_future(over.wait())
    timed_out = killed = True  # until the run is seen to end by itself
    try:
        done, _ = await asyncio.wait({reads, stopper}, timeout=limits.wall_s, return_when=asyncio.FIRST_COMPLETED)
        timed_out = not done
        killed = timed_out or over.is_set()
    finally:
        stopper.cancel()
        await asyncio.to_thread(_kill, proc, tree)  # every process of the run, always
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(reads, 5)  # EOF once every writer is dead
        await proc.wait()
    return Result(None if killed else proc.returncode, bytes(out), bytes(err), timed_out,
                  over.is_set(), label)


async def run(files: dict[str, str], script: list[str], limits: Limits = Limits(),
              cfg: Config = Config()) -> Result:
    """Run ``python -I -S -B`` on ``script`` (paths relative to the task directory, which
    holds ``files``) in the sandbox ``cfg`` names. Raises ``Unavailable`` where it cannot."""
    if cfg.mode not in MODES:
        raise Unavailable(f"unknown code sandbox {cfg.mode!r}",
                          f"set PREFSTREAM_CODE_SANDBOX to one of {', '.join(MODES)}")
    if cfg.mode == "bwrap":
        await asyncio.to_thread(probe, cfg)
    with tempfile.TemporaryDirectory(prefix="prefstream-sandbox-") as tmp:
        task = Path(tmp) / "task"
        task.mkdir()
        for name, text in files.items():
            (task / name).write_text(text)
        os.chmod(tmp, 0o755)
        if cfg.mode == "rlimits-unsafe":
            exe, _ = interpreter(cfg)
            return await _exec([exe, "-I", "-S", "-B", *[str(task / s) for s in script]], task, limits,
                               "rlimits-unsafe", preexec=_preexec(limits))
        rlimits, tree, label = await asyncio.to_thread(_plan, cfg, limits)
        try:
            argv = bwrap_argv(cfg, task, limits, rlimits, script)
            return await _exec(argv, task, limits, label, tree, tree.join if tree else None)
        finally:
            if tree is not None:
                await asyncio.to_thread(tree.remove)


def _preexec(limits: Limits):
    def apply() -> None:
        for key, value in _rlimits(limits, limits.memory_mb, limits.nproc).items():
            resource.setrlimit(getattr(resource, key), (value, value))
    return apply


_works: set[Config] = set()
_probe_lock = threading.Lock()


def probe(cfg: Config) -> None:
    """Raise ``Unavailable`` unless a bwrap run works here. A success is remembered per config;
    a failure is not (the blocked stage's retries probe again, so a fix is picked up)."""
    with _probe_lock:
        if cfg in _works:
            return
        why = _try(cfg)
        if why:
            raise Unavailable(why)
        _works.add(cfg)


def _try(cfg: Config) -> str:
    """"" where ``print(6 * 7)`` runs in the sandbox, else why not."""
    limits = Limits(wall_s=30)
    rlimits, tree, _ = _plan(cfg, limits)
    try:
        with tempfile.TemporaryDirectory(prefix="prefstream-sandbox-") as tmp:
            (Path(tmp) / "probe.py").write_text("print(6 * 7)\n")
            os.chmod(tmp, 0o755)
            argv = bwrap_argv(cfg, Path(tmp), limits, rlimits, ["probe.py"])
            done = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
                                  preexec_fn=tree.join if tree else None)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not run: {e}"
    finally:
        if tree is not None:
            tree.kill()
            tree.remove()
    if done.returncode == 0 and done.stdout.strip() == b"42":
        return ""
    return f"bwrap failed (exit {done.returncode}): {done.stderr.decode(errors='replace')[-300:].strip()}"
