"""The code verifier and its sandbox: real subprocesses, real limits, hostile code contained,
verdicts computed where the code cannot reach them."""
from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from agents.evaluators import cgroup, code_tests, sandbox
from agents.evaluators.code import CodeVerifier, check_params, extract_code
from schemas import (Candidate, EvaluationSpec, EvaluatorSpec, Message, ObjectiveSpec, Prompt, Sampling,
                     Verification)
from agents.objectives import problems
from streams.runtime import Blocked
from streams.settings import Settings

ADD_TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]
PROBE = ["assert probe() == 'reached'"]  # a containment probe scores 1 only where it got through
FAST = {"timeout_s": 4, "cpu_s": 2}
CHECKOUT = Path(__file__).resolve().parents[2]


def _prompt(tests: list[str]) -> Prompt:
    return Prompt(id="p-code", messages=[Message(role="user", content="Write add(a, b).")],
                  verification=Verification(kind="code", tests=tests))


def _objective(**params) -> ObjectiveSpec:
    return ObjectiveSpec(name="code", evaluation=EvaluationSpec(
        evaluators=[EvaluatorSpec(name="code", params={**FAST, **params})]))


def _cand(text: str, i: int = 0) -> Candidate:
    return Candidate(id=f"c{i}", text=text, backend="x", model="x",
                     sampling=Sampling(temperature=0, top_p=1, max_tokens=1))


def score(texts: list[str], tests: list[str] = ADD_TESTS, settings: Settings | None = None, **params):
    ev = CodeVerifier(settings)
    return asyncio.run(ev.score(_prompt(tests), [_cand(t, i) for i, t in enumerate(texts)], _objective(**params)))


def probe(body: str) -> str:
    """A solution whose ``probe()`` returns 'reached' where ``body`` runs without an error."""
    inner = "\n".join("        " + line for line in body.splitlines())
    return f"def probe():\n    try:\n{inner}\n        return 'reached'\n    except BaseException as e:\n        return repr(e)[:100]\n"


def bwrap_only():
    try:
        sandbox.probe(sandbox.Config())
    except sandbox.Unavailable as e:
        pytest.skip(f"no bubblewrap containment here: {e.detail}")


def processes_with(marker: str) -> list[int]:
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                out.append(int(cmdline.parent.name))
        except OSError:
            continue
    return out


# --- verdicts -------------------------------------------------------------------------------------

def test_correct_wrong_and_partial_solutions():
    bwrap_only()
    good = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    wrong = "```python\ndef add(a, b):\n    return 0 if a == -1 else a * b\n```"
    partial = "```python\ndef add(a, b):\n    return a + b if a >= 0 else 7\n```"
    s_good, s_wrong, s_partial = score([good, wrong, partial])
    assert (s_good.value, s_good.raw) == (1.0, "3/3") and "all tests pass" in s_good.rationale
    assert s_wrong.value == pytest.approx(1 / 3) and s_wrong.raw == "1/3"
    assert "wrong result: got 6" in s_wrong.rationale
    assert s_partial.value == pytest.approx(2 / 3)
    assert all(s.kind == "verifier" and s.evaluator == "code" for s in (s_good, s_wrong, s_partial))
    assert "sandbox: bwrap+" in s_good.rationale


def test_code_that_does_not_load_fails_every_test():
    bwrap_only()
    [s] = score(["def add(a, b) return a + b"])
    assert s.value == 0.0 and "SyntaxError" in s.rationale


def test_extract_code_prefers_the_longest_python_block():
    text = "```\nprint(1)\n```\n```python\ndef f():\n    return 1\n```\n```py\nx = 1\n```"
    assert extract_code(text) == "def f():\n    return 1\n"
    assert extract_code("def g(): pass") == "def g(): pass"
    assert extract_code("```\nplain = 1\n```") == "plain = 1\n"


CHEATS = {
    "always-equal object": "class Any:\n    def __eq__(self, other): return True\n    __hash__ = None\n"
                           "def add(a, b): return Any()",
    "int subclass with odd ==": "class I(int):\n    def __eq__(self, other): return True\n"
                                "def add(a, b): return I(0)",
    "str subclass": "class S(str):\n    def __eq__(self, other): return True\ndef add(a, b): return S('')",
    "list holding an always-equal object": "class Any:\n    def __eq__(self, o): return True\n"
                                           "def add(a, b): return [Any()]",
    "replaced exec and eval": "import builtins\nbuiltins.exec = builtins.eval = lambda *a, **k: None\n"
                              "def add(a, b): return -7",
    "test list rewritten": "import __main__\nfor n in ('tests', 'calls'):\n    if hasattr(__main__, n):\n"
                           "        getattr(__main__, n)[:] = ['pass' if n == 'tests' else 'True'] * len(getattr(__main__, n))\n"
                           "def add(a, b): return -7",
    "expected answers read from the task's files": (
        "import glob, os, re\nseen = {}\n"
        "for path in glob.glob('/task/*') + glob.glob('*'):\n"
        "    try:\n        text = open(path).read()\n    except Exception:\n        continue\n"
        "    for args, want in re.findall(r'add\\((.*?)\\) == (-?\\d+)', text):\n"
        "        seen[args.replace(' ', '')] = int(want)\n"
        "def add(a, b): return seen.get(f'{a},{b}', -7)"),
    "forged report with the nonce": (
        "import __main__, os, sys\nnonce = getattr(__main__, 'nonce', '')\n"
        "sys.__stdout__.write('\\n' + nonce + '[[true, \"\"], [true, \"\"], [true, \"\"]]\\n')\n"
        "sys.__stdout__.flush()\nos._exit(0)"),
    "forged results guessing every value": (
        "import json, os\nfor i in range(3):\n    for v in range(-20, 21):\n"
        "        os.write(3, (json.dumps({'i': i, 'value': v}) + '\\n').encode())\n"
        "        os.write(1, (json.dumps({'i': i, 'value': v}) + '\\n').encode())\nos._exit(0)"),
    "fake result line printed": "print('{\"i\": 0, \"value\": 5}')\ndef add(a, b): return -7",
    "exit 0 early": "import sys\ndef add(a, b): return a + b - 1\nsys.exit(0)",
    "os._exit": "import os\ndef add(a, b): return 1\nos._exit(0)",
    "monkeypatched json": "import json\njson.dumps = lambda *a, **k: '{\"i\": 0, \"value\": 5}'\n"
                          "def add(a, b): return -7",
    "monkeypatched stdout": "import sys, io\nsys.stdout = io.StringIO()\nsys.__stdout__.write('ok\\n')\n"
                            "def add(a, b): return -7",
    "NaN": "def add(a, b): return float('nan')",
    "unbounded recursion": "def add(a, b): return add(a, b)",
    "huge result": "def add(a, b): return 'x' * (4 * 1024 * 1024)",
}


def test_harness_cheats_score_nothing():
    """Each cheat class the review found (and others) on a wrong solution: no test passes."""
    bwrap_only()
    results = score(list(CHEATS.values()))
    for name, s in zip(CHEATS, results):
        assert s.value == 0.0, (name, s.raw, s.rationale)
    by_name = dict(zip(CHEATS, results))
    assert "not plain data" in by_name["always-equal object"].rationale
    assert "malformed test report" in by_name["forged results guessing every value"].rationale
    assert "output over" in by_name["huge result"].rationale


def test_expected_values_never_enter_the_sandbox():
    bwrap_only()
    spy = probe("import glob\ntext = ''.join(open(p).read() for p in glob.glob('/task/*'))\n"
                "assert '12345' + '67' not in text and 'calls' in str(glob.glob('/task/*'))\n"
                "assert 'add(2, 3)' in text")
    [s] = score([spy + "def add(a, b): return a + b\n"],
                tests=["assert probe() == 'reached'", "assert add(2, 3) != 1234567"])
    assert s.value == 1.0, s.rationale


def test_test_forms_split_into_calls_and_expected_values():
    calls: list[str] = []
    code_tests.split("assert add(1, 2) == 3", calls)
    code_tests.split("assert 0 <= rand() < 10", calls)
    code_tests.split("assert is_even(4) and not is_even(3)", calls)
    code_tests.split("assert sorted(f([3, 1])) == [1, 3], 'message'", calls)
    code_tests.split("assert f(2) is None", calls)
    assert calls == ["add(1, 2)", "rand()", "is_even(4)", "is_even(3)", "sorted(f([3, 1]))", "f(2)"]
    for bad in ["x = 1", "assert math.isclose(f(1), 0.3)", "assert isinstance(f(1), int)",
                "assert f(f(1) == 2) == 1", "assert isinstance(f(1), int) == True",
                "assert (", "assert f(1) == 1\nassert f(2) == 2"]:
        with pytest.raises(code_tests.Unsupported):
            code_tests.split(bad, [])
    assert code_tests.decode({"tuple": [1, {"set": [2]}]}) == (1, {2})
    assert code_tests.decode({"dict": [[{"tuple": [1]}, [None]]]}) == {(1,): [None]}
    for bad in [{"tuple": [1], "x": 1}, {"object": []}, {"dict": [[1]]}]:
        with pytest.raises(ValueError):
            code_tests.decode(bad)


def test_a_prompt_whose_tests_cannot_be_judged_outside_is_not_scored():
    [s] = score(["def add(a, b): return a + b"], tests=["assert add(1, 2) == 3", "import os"])
    assert s.value is None and "test 2" in s.error and "single assert" in s.error


def test_comparisons_and_tagged_values_are_judged_in_the_worker():
    bwrap_only()
    code = "def pair(): return (1, 2)\ndef items(): return {'a': [1.5, None]}\ndef tags(): return {3, 4}\n"
    tests = ["assert pair() == (1, 2)", "assert pair() != [1, 2]", "assert items() == {'a': [1.5, None]}",
             "assert tags() == {4, 3}", "assert 3 in tags()", "assert 0 < pair()[1] <= 2"]
    [s] = score([code], tests=tests)
    assert s.value == 1.0, s.rationale


# --- containment ----------------------------------------------------------------------------------

def test_the_worker_environment_and_host_files_are_out_of_reach(tmp_path):
    bwrap_only()
    secret = "hunter2-" + uuid.uuid4().hex
    # a process of the worker's with the secret in its environment (as PREFSTREAM_SASL_PASSWORD is)
    holder = subprocess.Popen(["sleep", "30"], env={"PREFSTREAM_SASL_PASSWORD": secret})
    host_tmp = Path(tempfile.mkdtemp(prefix="prefstream-test-"))
    (host_tmp / "note").write_text("x")
    in_root = tempfile.NamedTemporaryFile(dir="/root", delete=False) if os.access("/root", os.W_OK) else None
    try:
        assert secret.encode() in Path(f"/proc/{holder.pid}/environ").read_bytes()
        probes = [
            f"import os, glob\nfound = []\nfor p in glob.glob('/proc/*/environ'):\n    try:\n"
            f"        found += [p] if b'{secret}' in open(p, 'rb').read() else []\n    except OSError:\n        pass\n"
            f"assert found or '{secret}' in str(os.environ), 'not found'",
            f"open('{host_tmp / 'note'}').read()",
            f"open('{in_root.name if in_root else '/root/.bashrc'}').read()",
            f"open('{CHECKOUT / 'pyproject.toml'}').read()",
            "open('/etc/passwd').read()",
            f"import os\nassert os.listdir('{tmp_path}') is not None",
        ]
        results = score([probe(p) for p in probes], tests=PROBE)
    finally:
        holder.kill()
        holder.wait()
        shutil.rmtree(host_tmp)
        if in_root:
            os.unlink(in_root.name)
    for p, s in zip(probes, results):
        assert s.value == 0.0, (p, s.rationale)


def test_writes_outside_the_sandbox_tmp_do_not_land(tmp_path):
    bwrap_only()
    outside = Path(tempfile.mkdtemp(prefix="prefstream-test-"))
    os.chmod(outside, 0o777)
    prefix, _ = sandbox.interpreter(sandbox.Config())
    try:
        probes = [f"open('{outside / 'evil'}', 'w').write('x')", "open('/task/evil', 'w').write('x')",
                  f"open('{Path(prefix).parent / 'evil'}', 'w').write('x')", "open('/usr/lib/evil', 'w').write('x')",
                  "open('/tmp/fine', 'w').write('x')\nraise SystemExit('the sandbox tmp is writable')"]
        results = score([probe(p) for p in probes], tests=PROBE)
        assert list(outside.iterdir()) == []
    finally:
        shutil.rmtree(outside)
    assert not (Path(prefix).parent / "evil").exists()
    for p, s in zip(probes, results):
        assert s.value == 0.0, (p, s.rationale)
    assert "Read-only file system" in results[1].rationale or "No such file" in results[1].rationale


def test_loopback_is_unreachable_even_through__socket():
    bwrap_only()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted, done = [], threading.Event()

    def accept_one():
        while not done.is_set():
            try:
                accepted.append(listener.accept())
                return
            except (socket.timeout, OSError):
                continue

    t = threading.Thread(target=accept_one)
    t.start()
    try:
        raw = f"import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))"
        plain = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
        results = score([probe(raw), probe(plain)], tests=PROBE)
    finally:
        done.set()
        t.join()
        listener.close()
    assert accepted == []
    for s in results:
        assert s.value == 0.0, s.rationale


def test_the_worker_cannot_be_signalled_or_ptraced():
    bwrap_only()
    me = os.getpid()
    signal_it = f"import os\nos.kill({me}, 0)"
    ptrace_it = (f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                 f"assert libc.ptrace(0x4206, {me}, 0, 0) == 0, ctypes.get_errno()")  # PTRACE_SEIZE: no stop
    results = score([probe(signal_it), probe(ptrace_it)], tests=PROBE)
    for s in results:
        assert s.value == 0.0, s.rationale


def test_fork_bomb_is_contained_and_leaves_no_process():
    bwrap_only()
    marker = "bomb-" + uuid.uuid4().hex
    bomb = (f"import os\nMARK = '{marker}'\nwhile True:\n    try:\n"
            f"        if os.fork() == 0:\n            os.execv('/proc/self/exe', ['python', '-c', "
            f"'import os\\nwhile True:\\n  try: os.fork()\\n  except OSError: pass', MARK])\n"
            f"    except OSError:\n        pass\n")
    [s] = score([bomb], timeout_s=3)
    assert s.value == 0.0 and "timed out" in s.rationale
    assert processes_with(marker) == []


def test_the_process_count_holds_for_the_whole_run():
    bwrap_only()
    code = ("import os, time\ndef probe():\n    n = 0\n    while n < 100:\n        try:\n"
            "            if os.fork() == 0:\n                time.sleep(2)\n                os._exit(0)\n"
            "            n += 1\n        except OSError:\n            break\n    return n\n")
    [s] = score([code], tests=["assert probe() == 7"], nproc=8, memory_mb=1024)
    assert s.value == 1.0, s.rationale  # the code and 7 children: nproc 8 in all


def test_a_daemonised_process_does_not_outlive_its_run():
    bwrap_only()
    marker = "left-" + uuid.uuid4().hex
    code = (f"import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{marker}'])\n"
            f"    os._exit(0)\ndef add(a, b): return a + b")
    [s] = score([code])
    assert s.value == 1.0, s.rationale
    assert processes_with(marker) == []


def test_huge_output_is_capped_while_reading():
    """1 GiB written by the code: the run is killed at the cap; the worker never holds it."""
    bwrap_only()
    code = "import os\nblock = b'x' * (1 << 20)\nfor _ in range(1024):\n    os.write(1, block)\n    os.write(2, block)"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    [s] = score([code + "\ndef add(a, b): return a + b"])
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert s.value == 0.0 and "output over" in s.rationale
    assert grown_mb < 100, grown_mb


def test_memory_is_limited_for_the_whole_process_tree():
    """Four children of 96 MiB each under a 256 MiB limit: not all of them can live."""
    bwrap_only()
    code = ("import os\ndef probe():\n    pids = []\n    for _ in range(4):\n        pid = os.fork()\n"
            "        if pid == 0:\n            try:\n                blob = b'x' * (96 << 20)\n                r, _ = os.pipe()\n"
            "                os.read(r, 1)\n            finally:\n                os._exit(1)\n        pids.append(pid)\n"
            "    import time\n    time.sleep(1.5)\n    alive = [p for p in pids if os.waitpid(p, os.WNOHANG) == (0, 0)]\n"
            "    return 'reached' if len(alive) == 4 else f'{len(alive)} alive'\n")
    [s] = score([code], tests=PROBE, memory_mb=256, nproc=8, timeout_s=6)
    assert s.value == 0.0, s.rationale


def test_the_sandbox_runs_with_no_capabilities_and_no_user_namespaces():
    bwrap_only()
    caps = "line = [l for l in open('/proc/self/status') if l.startswith('CapEff')][0]\nassert int(line.split()[1], 16) != 0"
    userns = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nassert libc.unshare(0x10000000) == 0, ctypes.get_errno()"
    remount = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "assert libc.mount(None, b'/usr/lib', None, 32 | 4096, None) == 0, ctypes.get_errno()")
    results = score([probe(caps), probe(userns), probe(remount)], tests=PROBE)
    for s in results:
        assert s.value == 0.0, s.rationale


# --- fail closed, limits --------------------------------------------------------------------------

def test_no_containment_blocks_the_stage_instead_of_falling_back(monkeypatch):
    """Passes with or without bubblewrap: a missing one is never replaced by rlimits."""
    ev = CodeVerifier(Settings())
    monkeypatch.setattr(ev, "config", sandbox.Config(bwrap="/nonexistent/bwrap"))
    with pytest.raises(Blocked) as info:
        asyncio.run(ev.score(_prompt(ADD_TESTS), [_cand("def add(a, b): return a + b")], _objective()))
    assert info.value.reason == "sandbox_unavailable" and "bubblewrap" in info.value.fix
    with pytest.raises(Blocked):
        score(["def add(a, b): return a + b"], settings=Settings(code_sandbox="namespaces"))


def test_the_evaluate_stage_raises_blocked_not_a_dead_letter(monkeypatch):
    from agents.evaluate import process
    from schemas import CandidateSet

    ev = CodeVerifier(Settings())
    monkeypatch.setattr(ev, "config", sandbox.Config(bwrap="/nonexistent/bwrap"))
    objective = ObjectiveSpec(name="code", evaluation=EvaluationSpec(
        evaluators=[EvaluatorSpec(name="code")], features=[], guards=[]))
    cset = CandidateSet(id="s-1", prompt=_prompt(ADD_TESTS), objective=objective,
                        candidates=[_cand("def add(a, b): return a + b")])
    with pytest.raises(Blocked):  # Rejected (or any other error) would dead-letter the set
        asyncio.run(process(cset, {"code": ev}))


def test_a_root_worker_without_a_cgroup_is_refused(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("a non-root worker limits the tree by RLIMIT_NPROC in its own user namespace")
    monkeypatch.setattr(cgroup, "open_run", lambda *a, **k: None)
    with pytest.raises(Blocked) as info:
        score(["def add(a, b): return a + b"], settings=Settings(code_sandbox="bwrap", code_sandbox_cgroup="/x"))
    assert "cgroup" in info.value.detail


def test_the_unsafe_fallback_runs_only_when_the_operator_says_so():
    [s] = score(["def add(a, b): return a + b"], settings=Settings(code_sandbox="rlimits-unsafe"))
    assert s.value == 1.0 and "sandbox: rlimits-unsafe" in s.rationale


def test_objective_limits_above_the_operators_maxima_are_refused():
    settings = Settings(code_max_memory_mb=512)
    spec = _objective(memory_mb=1_000_000)
    found = problems(spec, settings)
    assert any("memory_mb 1e+06 is over the operator's maximum 512" in p for p in found), found
    assert check_params({"memory_mb": "1e6"}) and check_params({"nproc": -1}) and check_params({"shell": 1})
    assert check_params({"memory_mb": 8}) and check_params({"cpu_s": float("nan")})
    assert check_params({"timeout_s": 5, "memory_mb": 256}, Settings()) == []
    [s] = score(["def add(a, b): return a + b"], settings=settings, memory_mb=1_000_000)
    assert s.value is None and "over the operator's maximum" in s.error


def test_an_interpreter_under_tmp_is_bound_after_the_sandbox_tmp(tmp_path):
    cfg = sandbox.Config(python=str(tmp_path / "py" / "bin" / "python3"), bwrap="/usr/bin/bwrap")
    argv = sandbox.bwrap_argv(cfg, tmp_path, sandbox.Limits(), {}, ["x.py"])
    assert argv.index("/tmp") < argv.index(str(tmp_path / "py"))
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--clearenv", "--disable-userns"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"


NON_ROOT_RUN = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
from agents.evaluators import sandbox
async def main():
    out = []
    for code in json.loads(sys.argv[3]):
        r = await sandbox.run({"s.py": code}, ["s.py"], sandbox.Limits(wall_s=5, cpu_s=3), sandbox.Config(python=sys.argv[2]))
        out.append([r.containment, r.stdout.decode()[-300:], r.stderr.decode()[-300:]])
    print(json.dumps(out))
asyncio.run(main())
"""


def test_a_non_root_worker_gets_no_capabilities_and_a_bounded_tree():
    """The sandbox module alone (standard library) run by an unprivileged uid: no cgroup, so the
    tree is bounded by RLIMIT_NPROC in the run's user namespace and RLIMIT_AS split across it;
    the read-only binds cannot be remounted and no further user namespace can be made."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or python is None or shutil.which("bwrap") is None:
        pytest.skip("needs root (to become an unprivileged uid), bwrap and a system python3")
    work = Path(tempfile.mkdtemp(prefix="prefstream-nonroot-"))
    try:
        pkg = work / "agents" / "evaluators"
        pkg.mkdir(parents=True)
        for name in ("agents/__init__.py", "agents/evaluators/__init__.py"):
            (work / name).write_text("")
        for name in ("sandbox.py", "cgroup.py"):
            shutil.copy(CHECKOUT / "agents" / "evaluators" / name, pkg / name)
        (work / "run.py").write_text(NON_ROOT_RUN)
        subprocess.run(["chmod", "-R", "a+rX", str(work)], check=True)
        codes = ["import os\nprint(os.getuid())",
                 "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                 "print(libc.mount(None, b'/usr/lib', None, 32 | 4096, None), libc.unshare(0x10000000))",
                 "open('/usr/lib/prefstream-evil', 'w')",
                 "import os, time\nn = 0\nwhile n < 100:\n    try:\n        if os.fork() == 0:\n"
                 "            time.sleep(2)\n            os._exit(0)\n        n += 1\n    except OSError:\n        break\nprint(n)",
                 "b = b'x' * (100 << 20)"]

        def unprivileged():
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)

        done = subprocess.run([python, "-I", str(work / "run.py"), str(work), python, json.dumps(codes)],
                              preexec_fn=unprivileged, capture_output=True, timeout=90, cwd=str(work))
    finally:
        shutil.rmtree(work)
    if b"sandbox" in done.stderr and b"Unavailable" in done.stderr:
        pytest.skip(f"no unprivileged user namespaces here: {done.stderr.decode()[-300:]}")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    uid, mount, write, forks, memory = json.loads(done.stdout)
    assert all(r[0] == "bwrap+rlimits" for r in (uid, mount, write, forks, memory))
    assert uid[1].strip() == "65534"
    assert mount[1].split() == ["-1", "-1"], mount
    assert "Read-only file system" in write[2]
    assert int(forks[1]) < 16, forks  # 256 MiB / 64 MiB: 4 processes at most
    assert "MemoryError" in memory[2]
    assert not Path("/usr/lib/prefstream-evil").exists()
