"""The sandbox's inside half: run as ``python -I -S sandbox_child.py CONFIG_JSON`` by
``agents.evaluators.sandbox`` under ``unshare`` (new network, mount, PID, IPC and UTS
namespaces; a new user namespace too where the worker is not root). Standard library only,
never imported by prefstream.

It builds a throw-away root file system and moves into it:

* ``/`` a small tmpfs, remounted read-only at the end;
* ``/usr`` (and the ``/bin``, ``/lib``, ``/lib64``, ``/sbin`` links) and the Python
  installation, bind-mounted read-only, no setuid, no devices;
* ``/task`` the task files (read-only); ``/tmp`` a size-limited tmpfs, the only writable place;
* ``/dev/null``, ``/dev/zero``, ``/dev/urandom`` and nothing else: no ``/proc``, ``/etc``,
  ``/home``, ``/root``, ``/work``, ``/sys``.

``pivot_root`` then detaches the old root, so no path leads back to the host's files. It
then forks: the child sets the resource limits and no-new-privileges, drops to the
unprivileged uid/gid given (where it runs as real root) and ``exec``s the command; this
process, the PID namespace's init, waits for it and exits with its status.
"""
import ctypes
import json
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}

libc = ctypes.CDLL(None, use_errno=True)


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {dst}")


def bind_ro(src, dst):
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    mount(src, dst, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID
    if os.path.isdir(src):
        flags |= MS_NODEV
    mount(None, dst, None, flags)


def build_root(cfg):
    root = cfg["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for name in ("bin", "lib", "lib64", "sbin"):
        host = "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), os.path.join(root, name))
        elif os.path.isdir(host):
            bind_ro(host, root + host)
    for path in ["/usr", *cfg["ro"]]:
        bind_ro(path, root + path)
    bind_ro(cfg["task"], root + "/task")
    for dev in ("null", "zero", "urandom"):
        bind_ro("/dev/" + dev, f"{root}/dev/{dev}")
    os.makedirs(root + "/tmp")
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmp_mb']}m,mode=1777")
    os.makedirs(root + "/.old")
    nr = SYS_PIVOT_ROOT[os.uname().machine]
    _check(libc.syscall(nr, root.encode(), (root + "/.old").encode()), "pivot_root")
    os.chdir("/")
    _check(libc.umount2(b"/.old", MNT_DETACH), "umount old root")
    os.rmdir("/.old")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def limit(cfg):
    cpu = int(cfg["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    mem = cfg["memory_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
    fsize = cfg["tmp_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def drop(cfg):
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    uid = cfg.get("uid")
    if uid is not None:  # real root: become a uid nobody else uses (its own process count)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def main():
    cfg = json.loads(sys.argv[1])
    try:
        build_root(cfg)
    except OSError as e:
        sys.stderr.write(f"sandbox setup failed: {e}\n")
        os._exit(125)
    # This process is the PID namespace's init, which ignores signals it has no handler for
    # (RLIMIT_CPU's SIGXCPU included): the command runs in a child, and when that child ends
    # this init exits and the kernel kills whatever else is left in the namespace.
    pid = os.fork()
    if pid == 0:
        try:
            limit(cfg)
            drop(cfg)
            os.chdir("/tmp")
            env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
                   "PYTHONDONTWRITEBYTECODE": "1"}
            os.execve(cfg["argv"][0], cfg["argv"], env)
        except OSError as e:
            sys.stderr.write(f"sandbox setup failed: {e}\n")
        os._exit(125)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
