"""The code verifier: run a response's Python code against the prompt's tests, sandboxed,
and judge the results here, where the code cannot reach.

The code is the longest fenced ``python``/``py`` block of the response (else the longest
unlabelled fenced block, else the whole text). Each test is split by
``agents.evaluators.code_tests`` into *calls* (expressions) and *expected values*
(literals); only the calls go into the sandbox (``agents.evaluators.sandbox``), with a small
harness that runs the code, evaluates each call in its namespace and prints each result as
plain data (JSON; a tuple, set or dict tagged). The worker rebuilds the values (anything
that is not plain data fails that test) and compares them with the expected values, which
never enter the sandbox: whatever the code does to the harness, its output is data, and a
test passes only where that data matches what the code never saw. A prompt whose tests
cannot be split is not scored (``value`` None, with the reason).

The score is the fraction of tests passed. Limits come from the objective's ``params`` for
``code`` (``timeout_s``, ``cpu_s``, ``memory_mb``, ``nproc``), each at most the operator's
maximum in Settings (``code_max_*``); no sandbox, no score: ``Blocked("sandbox_unavailable")``.
"""
from __future__ import annotations

import json
import logging
import math
import re

from agents.evaluators import code_tests, sandbox
from agents.evaluators.base import params_of
from schemas import Candidate, ObjectiveSpec, Prompt, Score
from streams.runtime import Blocked

log = logging.getLogger(__name__)

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)
DETAIL_CHARS = 400
PARAMS = {"timeout_s": ("code_max_wall_s", float), "cpu_s": ("code_max_cpu_s", int),
          "memory_mb": ("code_max_memory_mb", int), "nproc": ("code_max_nproc", int)}

# Runs inside the sandbox. It is not trusted to judge anything: the code it runs can replace
# any of it; the type check below only gives an honest solution a clear message.
HARNESS = r'''
import json, os, sys
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr
here = os.path.dirname(os.path.abspath(__file__))
calls = json.load(open(os.path.join(here, "calls.json")))
source = open(os.path.join(here, "solution.py")).read()

def plain(v, depth=0):
    t = type(v)
    if v is None or t in (bool, int, float, str):
        return v
    if depth > 50:
        raise TypeError("result nested too deeply")
    if t is list:
        return [plain(x, depth + 1) for x in v]
    if t is tuple:
        return {"tuple": [plain(x, depth + 1) for x in v]}
    if t in (set, frozenset):
        return {"set": [plain(x, depth + 1) for x in v]}
    if t is dict:
        return {"dict": [[plain(k, depth + 1), plain(x, depth + 1)] for k, x in v.items()]}
    raise TypeError("result is not plain data: " + str(t.__name__)[:40])

ns = {"__name__": "solution"}
try:
    exec(compile(source, "solution.py", "exec"), ns)
    broken = None
except BaseException as e:
    broken = "solution: " + type(e).__name__ + ": " + str(e)[:150]
for i, call in enumerate(calls):
    try:
        if broken:
            raise RuntimeError(broken)
        line = json.dumps({"i": i, "value": plain(eval(compile(call, "test", "eval"), ns))})
    except BaseException as e:
        line = json.dumps({"i": i, "error": broken or type(e).__name__ + ": " + str(e)[:150]})
    out.write(line + "\n")
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
                          cpu_s=math.ceil(params.get("cpu_s", d.cpu_s)),
                          memory_mb=math.ceil(params.get("memory_mb", d.memory_mb)),
                          nproc=math.ceil(params.get("nproc", d.nproc)))


def check_params(params: dict, settings=None) -> list[str]:
    """Why the objective's ``code`` params cannot be used: unknown, not a positive number, or
    (with ``settings``) above the operator's maximum."""
    out = []
    for key, value in params.items():
        if key not in PARAMS:
            out.append(f"code: unknown param {key!r}; known: {sorted(PARAMS)}")
        elif type(value) not in (int, float) or not 0 < value < float("inf"):
            out.append(f"code.{key} must be a positive number, not {value!r}")
        elif key == "memory_mb" and value < sandbox.MIN_PROCESS_MB:
            out.append(f"code.memory_mb {value:g} is too small for the interpreter (at least {sandbox.MIN_PROCESS_MB})")
        elif settings is not None and value > getattr(settings, PARAMS[key][0]):
            maximum = getattr(settings, PARAMS[key][0])
            out.append(f"code.{key} {value:g} is over the operator's maximum {maximum:g} "
                       f"(PREFSTREAM_{PARAMS[key][0].upper()})")
    return out


def split_tests(tests: list[str]) -> tuple[list[list[code_tests.Check]], list[str]]:
    """Each test's checks and the calls they need (``Unsupported`` names the test)."""
    calls: list[str] = []
    checks = []
    for n, test in enumerate(tests, 1):
        try:
            checks.append(code_tests.split(test, calls))
        except code_tests.Unsupported as e:
            raise code_tests.Unsupported(f"test {n} ({test[:80]!r}): {e}") from None
    return checks, calls


class CodeVerifier:
    """Scores the fraction of the prompt's tests a response's code passes."""

    name = "code"
    kind = "verifier"
    waits = True  # on the sandbox's child process: it runs beside the set's other waiting evaluators

    def __init__(self, settings=None) -> None:
        from streams.settings import Settings

        self.settings = settings if settings is not None else Settings()
        s = self.settings
        self.config = sandbox.Config(mode=s.code_sandbox, cgroup=s.code_sandbox_cgroup or "")
        if s.code_sandbox == "rlimits-unsafe":
            log.warning("code sandbox: rlimits-unsafe (set by the operator): verified code runs uncontained, "
                        "with the worker's files, processes and network in reach")

    def applies(self, prompt: Prompt) -> bool:
        v = prompt.verification
        return v is not None and v.kind == "code" and bool(v.tests)

    async def check(self, checks: list[list[code_tests.Check]], calls: list[str], text: str,
                    limits: sandbox.Limits) -> Score:
        files = {"harness.py": HARNESS, "solution.py": extract_code(text), "calls.json": json.dumps(calls)}
        try:
            result = await sandbox.run(files, ["harness.py"], limits, self.config)
        except sandbox.Unavailable as e:
            raise Blocked("sandbox_unavailable", f"code sandbox ({self.config.mode}): {e.detail}", e.fix) from None
        where = f"sandbox: {result.containment}"
        out = result.stdout[:result.stdout.rfind(b"\n") + 1]  # a line cut off by a kill is no result
        report = code_tests.parse_report(out, len(calls))
        ended = [self._ended(result, limits)] if result.timed_out or result.over_output else []
        if report is None:
            return self._score(0.0, f"0/{len(checks)}", "; ".join([*ended, "malformed test report", where]))
        verdicts = [code_tests.judge(c, report) for c in checks]
        passed = sum(ok for ok, _ in verdicts)
        failures = [f"test {i + 1}: {why}" for i, (ok, why) in enumerate(verdicts) if not ok]
        if failures and not ended and len(report) < len(calls):
            ended = [self._ended(result, limits)]
        detail = "; ".join([*ended, *failures])[:DETAIL_CHARS] or "all tests pass"
        return self._score(passed / len(checks), f"{passed}/{len(checks)}", f"{detail}; {where}")

    @staticmethod
    def _ended(result: sandbox.Result, limits: sandbox.Limits) -> str:
        if result.timed_out:
            return f"timed out after {limits.wall_s:g}s"
        if result.over_output:
            return f"output over {limits.output_kb} KiB"
        tail = (result.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {result.returncode}"])
        return f"ended early ({tail[-1][:200]})"

    def limits(self, objective: ObjectiveSpec) -> sandbox.Limits:
        params = params_of(objective, self.name)
        problems = check_params(params, self.settings)
        if problems:
            raise ValueError("; ".join(problems))
        return limits_from(params)

    async def score(self, prompt: Prompt, candidates: list[Candidate],
                    objective: ObjectiveSpec) -> list[Score]:
        if not self.applies(prompt):
            return [self._none("no code tests") for _ in candidates]
        try:
            checks, calls = split_tests(list(prompt.verification.tests))  # type: ignore[union-attr]
            limits = self.limits(objective)
        except ValueError as e:  # Unsupported is one: judged here or not at all
            return [self._none(str(e)[:DETAIL_CHARS]) for _ in candidates]
        out = []
        for c in candidates:  # one at a time: runs are CPU-bound and the cores are shared
            try:
                out.append(await self.check(checks, calls, c.text, limits))
            except Blocked:
                raise
            except Exception as e:  # a run that fails to start is this candidate's error, not a verdict
                log.exception("code verification failed")
                out.append(self._none(f"{type(e).__name__}: {e}"))
        return out

    def _score(self, value: float, raw: str, rationale: str) -> Score:
        return Score(evaluator=self.name, kind=self.kind, value=value, raw=raw, rationale=rationale)

    def _none(self, error: str) -> Score:
        return Score(evaluator=self.name, kind=self.kind, value=None, error=error)
