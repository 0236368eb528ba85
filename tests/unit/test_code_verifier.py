"""The code verifier and its sandbox: real subprocesses, real limits, hostile code contained."""
from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from agents.evaluators import sandbox
from agents.evaluators.code import CodeVerifier, extract_code, read_report
from schemas import (Candidate, EvaluationSpec, EvaluatorSpec, Message, ObjectiveSpec, Prompt, Sampling,
                     Verification)

ADD_TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]
FAST = {"timeout_s": 4, "cpu_s": 2}


def _prompt(tests: list[str]) -> Prompt:
    return Prompt(id="p-code", messages=[Message(role="user", content="Write add(a, b).")],
                  verification=Verification(kind="code", tests=tests))


def _objective(**params) -> ObjectiveSpec:
    return ObjectiveSpec(name="code", evaluation=EvaluationSpec(
        evaluators=[EvaluatorSpec(name="code", params={**FAST, **params})]))


def _cand(text: str, i: int = 0) -> Candidate:
    return Candidate(id=f"c{i}", text=text, backend="x", model="x",
                     sampling=Sampling(temperature=0, top_p=1, max_tokens=1))


def score(texts: list[str], tests: list[str] = ADD_TESTS, **params):
    ev = CodeVerifier()
    return asyncio.run(ev.score(_prompt(tests), [_cand(t, i) for i, t in enumerate(texts)], _objective(**params)))


def namespaces_only():
    if sandbox.containment() != "namespaces":
        pytest.skip("this machine cannot create namespaces; only rlimits contain the code here")


def sandbox_processes() -> list[int]:
    """Live processes running as one of the sandbox's uids."""
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid = int(next(line for line in status.read_text().splitlines() if line.startswith("Uid:")).split()[1])
        except (OSError, StopIteration, ValueError):
            continue
        if sandbox.UID_BASE <= uid < sandbox.UID_BASE + sandbox.UID_SPAN:
            out.append(int(status.parent.name))
    return out


def test_correct_wrong_and_partial_solutions():
    good = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    wrong = "```python\ndef add(a, b):\n    return 0 if a == -1 else a * b\n```"
    partial = "```python\ndef add(a, b):\n    return a + b if a >= 0 else 7\n```"
    s_good, s_wrong, s_partial = score([good, wrong, partial])
    assert (s_good.value, s_good.raw) == (1.0, "3/3") and "all tests pass" in s_good.rationale
    assert s_wrong.value == pytest.approx(1 / 3) and s_wrong.raw == "1/3"
    assert "AssertionError" in s_wrong.rationale
    assert s_partial.value == pytest.approx(2 / 3)
    assert all(s.kind == "verifier" and s.evaluator == "code" for s in (s_good, s_wrong, s_partial))
    assert f"sandbox: {sandbox.containment()}" in s_good.rationale


def test_code_that_does_not_load_fails_every_test():
    [s] = score(["def add(a, b) return a + b"])
    assert s.value == 0.0 and "SyntaxError" in s.rationale


def test_extract_code_prefers_the_longest_python_block():
    text = "```\nprint(1)\n```\n```python\ndef f():\n    return 1\n```\n```py\nx = 1\n```"
    assert extract_code(text) == "def f():\n    return 1\n"
    assert extract_code("def g(): pass") == "def g(): pass"
    assert extract_code("```\nplain = 1\n```") == "plain = 1\n"


def test_early_exit_or_a_forged_report_scores_zero():
    exits = "import os\ndef add(a, b): return a + b\nos._exit(0)"
    forged = "import sys\ndef add(a, b): return -99\nprint('[[true, \"\"], [true, \"\"], [true, \"\"]]')"
    s_exit, s_forged = score([exits, forged])
    assert s_exit.value == 0.0 and "no test report" in s_exit.rationale
    assert s_forged.value == 0.0
    assert read_report("x\nNONCE[[true, \"\"]]\n", "NONCE", 1) == [[True, ""]]
    assert read_report("[[true, \"\"]]\n", "NONCE", 1) is None


def test_infinite_loop_is_stopped_at_the_time_limit():
    started = time.monotonic()
    [s] = score(["def add(a, b):\n    while True:\n        pass"])
    assert s.value == 0.0 and ("timed out" in s.rationale or "no test report" in s.rationale)
    assert time.monotonic() - started < 15


def test_fork_bomb_is_contained_and_leaves_no_process():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    started = time.monotonic()
    [s] = score([bomb])
    assert s.value == 0.0
    assert time.monotonic() - started < 15
    deadline = time.monotonic() + 5
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sandbox_processes() == []


def test_memory_bomb_is_refused():
    [s] = score(["blob = bytearray(2 * 1024 ** 3)\ndef add(a, b): return a + b"], memory_mb=128)
    assert s.value == 0.0 and "MemoryError" in s.rationale


def test_host_files_are_out_of_reach():
    namespaces_only()
    probes = [
        "data = open('/etc/passwd').read()",
        "data = open('/work/main/pyproject.toml').read()",
        "import os\ndata = os.listdir('/root/.ssh') if os.path.exists('/root/.ssh') else None\nassert data",
        "import os\ndata = os.listdir('/proc')",
        "open('/task/evil.py', 'w').write('x')",
        "open('/usr/evil', 'w').write('x')",
    ]
    results = score(probes, tests=["assert True"])
    for probe, s in zip(probes, results):
        assert s.value == 0.0, (probe, s.rationale)
    assert "FileNotFoundError" in results[0].rationale
    assert "Read-only file system" in results[5].rationale


def test_network_is_unreachable_even_on_loopback():
    namespaces_only()
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
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\ndef add(a, b): return a + b"
        [s] = score([code])
    finally:
        done.set()
        t.join()
        listener.close()
    assert s.value == 0.0 and "Network is unreachable" in s.rationale, s.rationale
    assert accepted == []


def test_a_writable_tmp_and_the_stdlib_work_inside():
    code = ("import json, os, tempfile\npath = os.path.join(tempfile.gettempdir(), 'x.json')\n"
            "json.dump({'a': 1}, open(path, 'w'))\ndef add(a, b): return json.load(open(path))['a'] + a + b - 1")
    [s] = score([code])
    assert s.value == 1.0, s.rationale


def test_does_not_apply_without_tests():
    ev = CodeVerifier()
    assert not ev.applies(_prompt([]))
    assert ev.applies(_prompt(["assert True"]))
    assert not ev.applies(Prompt(id="p", messages=[Message(role="user", content="hi")]))


def test_runs_as_an_unprivileged_uid_when_the_worker_is_root():
    namespaces_only()
    if os.geteuid() != 0:
        pytest.skip("only a root worker changes uid")
    [s] = score(["import os\nuid = os.getuid()"], tests=["assert uid >= 200000"])
    assert s.value == 1.0, s.rationale


def test_the_rlimits_fallback_still_limits_and_blocks_python_sockets(monkeypatch):
    """Where namespaces are unavailable: limits hold and Python's socket refuses (the file
    system is then the worker's, which the result says)."""
    monkeypatch.setattr(sandbox, "_level", "rlimits")
    loop = "def add(a, b):\n    while True:\n        pass"
    net = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\ndef add(a, b): return a + b"
    good = "def add(a, b): return a + b"
    s_loop, s_net, s_good = score([loop, net, good])
    assert s_loop.value == 0.0
    assert s_net.value == 0.0 and "network access is blocked" in s_net.rationale
    assert s_good.value == 1.0 and "sandbox: rlimits" in s_good.rationale
