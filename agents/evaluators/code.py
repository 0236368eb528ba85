"""The code verifier: run a response's Python code against the prompt's tests, sandboxed.

The code is the longest fenced ``python``/``py`` block of the response (else the longest
unlabelled fenced block, else the whole text). It runs in ``agents.evaluators.sandbox``
(limits: wall-clock and CPU time, address space, processes, file size; no network and no host
files where the machine allows namespaces) with a small harness that executes the code, then
each test (``Verification.tests``) in the same namespace, and reports which tests passed.

The score is the fraction of tests passed. The harness prints its report after a random
nonce it reads from stdin, so code that exits early or prints a fake report scores 0. (Code
written against this very harness could still find the nonce in its own process's memory:
the nonce defeats accidents and casual cheating, the sandbox contains the harm.)

Limits come from the objective's ``params`` for ``code``: ``timeout_s`` (wall clock, 10),
``cpu_s`` (5), ``memory_mb`` (256), ``nproc`` (16).
"""
from __future__ import annotations

import json
import logging
import re
import secrets

from agents.evaluators import sandbox
from agents.evaluators.base import params_of
from schemas import Candidate, ObjectiveSpec, Prompt, Score

log = logging.getLogger(__name__)

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)
DETAIL_CHARS = 400

HARNESS = r'''
import io, json, sys
nonce = sys.stdin.readline().strip()
out = sys.stdout
sys.stdout = io.StringIO()
here = __file__.rsplit("/", 1)[0]
tests = json.load(open(here + "/tests.json"))
source = open(here + "/solution.py").read()
ns = {"__name__": "solution"}
results = []
try:
    exec(compile(source, "solution.py", "exec"), ns)
    broken = None
except BaseException as e:
    broken = "solution: " + type(e).__name__ + ": " + str(e)[:150]
for t in tests:
    if broken:
        results.append([False, broken])
        continue
    try:
        exec(compile(t, "test", "exec"), ns)
        results.append([True, ""])
    except BaseException as e:
        results.append([False, type(e).__name__ + ": " + str(e)[:150]])
out.write("\n" + nonce + json.dumps(results) + "\n")
out.flush()
'''


def extract_code(text: str) -> str:
    """The code in a response: the longest python block, else the longest fenced block,
    else the whole text."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    python = [b for lang, b in blocks if lang in ("python", "py", "python3")]
    plain = [b for lang, b in blocks if not lang]
    for group in (python, plain):
        if group:
            return max(group, key=len)
    return text


def limits_from(params: dict) -> sandbox.Limits:
    d = sandbox.Limits()
    return sandbox.Limits(wall_s=float(params.get("timeout_s", d.wall_s)),
                          cpu_s=int(params.get("cpu_s", d.cpu_s)),
                          memory_mb=int(params.get("memory_mb", d.memory_mb)),
                          nproc=int(params.get("nproc", d.nproc)))


def read_report(stdout: str, nonce: str, count: int) -> list[list] | None:
    """The harness's report (``[[passed, detail], ...]``), or None where there is none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(nonce):
            try:
                report = json.loads(line[len(nonce):])
            except ValueError:
                return None
            ok = isinstance(report, list) and len(report) == count
            return report if ok else None
    return None


class CodeVerifier:
    """Scores the fraction of the prompt's tests a response's code passes."""

    name = "code"
    kind = "verifier"
    waits = True  # on the sandbox's child process: it runs beside the set's other waiting evaluators

    def applies(self, prompt: Prompt) -> bool:
        v = prompt.verification
        return v is not None and v.kind == "code" and bool(v.tests)

    async def check(self, tests: list[str], text: str, limits: sandbox.Limits) -> Score:
        nonce = secrets.token_hex(16)
        files = {"harness.py": HARNESS, "solution.py": extract_code(text),
                 "tests.json": json.dumps(tests)}
        result = await sandbox.run(files, ["harness.py"], stdin=(nonce + "\n").encode(), limits=limits)
        where = f"sandbox: {result.containment}"
        if result.timed_out:
            return self._score(0.0, f"0/{len(tests)}", f"timed out after {limits.wall_s:g}s; {where}")
        report = read_report(result.stdout, nonce, len(tests))
        if report is None:
            tail = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
            return self._score(0.0, f"0/{len(tests)}", f"no test report ({tail[:200]}); {where}")
        passed = sum(1 for ok, _ in report if ok)
        failures = [f"test {i + 1}: {detail}" for i, (ok, detail) in enumerate(report) if not ok]
        detail = "; ".join(failures)[:DETAIL_CHARS] or "all tests pass"
        return self._score(passed / len(tests), f"{passed}/{len(tests)}", f"{detail}; {where}")

    async def score(self, prompt: Prompt, candidates: list[Candidate],
                    objective: ObjectiveSpec) -> list[Score]:
        if not self.applies(prompt):
            return [self._none("no code tests") for _ in candidates]
        tests = list(prompt.verification.tests)  # type: ignore[union-attr]
        limits = limits_from(params_of(objective, self.name))
        out = []
        for c in candidates:  # one at a time: runs are CPU-bound and the cores are shared
            try:
                out.append(await self.check(tests, c.text, limits))
            except Exception as e:  # the sandbox failing to start must not stop the stage
                log.exception("code verification failed")
                out.append(self._none(f"{type(e).__name__}: {e}"))
        return out

    def _score(self, value: float, raw: str, rationale: str) -> Score:
        return Score(evaluator=self.name, kind=self.kind, value=value, raw=raw, rationale=rationale)

    def _none(self, error: str) -> Score:
        return Score(evaluator=self.name, kind=self.kind, value=None, error=error)
