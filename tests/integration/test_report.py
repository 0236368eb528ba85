"""`prefstream report` on real pipeline runs: two runs of one objective (versions 1 and 2) on
the test broker with the echo backend, a math verifier and the length heuristic; reports from
the run directory (through the CLI) and from the topics. The page must parse, hold every
section, show a candidate's `<script>` as inert text, carry no external URL, and agree with
what the run wrote; where Debian's `chromium` is installed, a headless Chromium opens it with
no network request and takes a screenshot."""
from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import re
import statistics
import subprocess
import sys
import uuid
from html.parser import HTMLParser

import pytest
from PIL import Image

from schemas import (EvaluationSpec, EvaluatorSpec, GeneratorSpec, InstantiationSpec, Message, ObjectiveSpec,
                     Prompt, SynthesisSpec, Verification)
from streams.commands.reports.summary import Sources, figures, load_topics
from streams.commands.reports.html import SECTIONS, render
from streams.commands.cli import main
from streams.commands.run import run
from streams.settings import load
from streams.topics import from_settings
from tests.conftest import ROOT, settings_env

HOSTILE = "<script>alert(1)</script>"
SOURCE = "hostile $x$ <b>"  # a source name with mathtext and markup in it


def objective(version: int) -> ObjectiveSpec:
    """Two echo generators: a short one ("Candidate 0") and a long one that repeats the
    question, so the long candidates carry the question's last number (the math answer) and
    its text. The score is the mean of math and length: longer wins, by a margin that grows
    with the length difference (a length bias the report must show)."""
    return ObjectiveSpec(
        name="report-echo", version=version,
        synthesis=SynthesisSpec(strategy="pool", candidates=4, generators=[
            GeneratorSpec(backend="echo", model="echo-short", max_tokens=2, count=2),
            GeneratorSpec(backend="echo", model="echo-long", max_tokens=60, count=2)]),
        evaluation=EvaluationSpec(aggregation="weighted_mean",
                                  evaluators=[EvaluatorSpec(name="math"), EvaluatorSpec(name="length")]),
        instantiation=InstantiationSpec(pairs="best_vs_worst" if version == 1 else "best_vs_each",
                                        min_margin=0.1, kto=version == 2))


def _prompt(pid: str, text: str, source: str, answer: str | None = None, **kw) -> Prompt:
    return Prompt(id=pid, messages=[Message(role="user", content=text)], source=source,
                  verification=Verification(kind="math", answer=answer) if answer else None, **kw)


def first_prompts() -> list[Prompt]:
    return [
        _prompt("p-rep-hostile", f"Repeat {HOSTILE} then say 5", SOURCE, "5"),
        _prompt("p-rep-math-1", "What is 3 plus 4? Say 7", "arith", "7"),
        _prompt("p-rep-math-2", "What is twelve times three, in digits? It is 36", "arith", "36"),
        _prompt("p-rep-plain-1", "Describe the sea.", "plain"),
        _prompt("p-rep-plain-2", "Describe the sea in one long paragraph about waves, tides, storms, gulls, "
                                 "harbours, lighthouses and the sailors who cross it at night", "plain"),
        _prompt("p-rep-plain-3", "Name a colour of the $ky and a price like $5 and $6", "plain"),
        Prompt(id="p-rep-broken", messages=[Message(role="user", content="hi"), Message(role="assistant",
                                                                                       content="hello")],
               source="broken"),
        _prompt("p-rep-lost", "Route me nowhere", "broken", objective="no-such-objective"),
    ]


def second_prompts() -> list[Prompt]:
    return [_prompt(f"p-rep2-{i}", f"Case {i}: describe {'the wide ' * i}river and say {i}", "arith", str(i))
            for i in range(5, 9)]


class Page(HTMLParser):
    """Collects what the checks need: start tags with attributes, section ids, text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def runs(broker, tmp_path_factory):
    """Objective version 1 over the first prompts, then version 2 over others, one namespace."""
    tmp = tmp_path_factory.mktemp("report")
    s = load({}, broker=broker.address, namespace="trep" + uuid.uuid4().hex[:8], partitions=2,
             data_dir=str(tmp / "data"), objective_wait_s=20.0, metrics_port=0)
    env = {**settings_env(s), "PREFSTREAM_OBJECTIVE_WAIT_S": "3"}  # the worker's wait for an unknown objective
    first = run(s, first_prompts(), objective(1), tmp / "run1", env=env, progress=False)
    second = run(s, second_prompts(), objective(2), tmp / "run2", env=env, progress=False)
    return s, tmp, first, second


@pytest.fixture(scope="module")
def report(runs):
    """The CLI's report of run 1's directory: (html text, figures, run summary, run dir)."""
    s, tmp, first, _ = runs
    html_path, json_path = tmp / "report.html", tmp / "figures.json"
    proc = subprocess.run([sys.executable, "-m", "streams.commands.cli", "report", str(tmp / "run1"), "--out", str(html_path),
                           "--json", str(json_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return html_path.read_text(), json.loads(json_path.read_text()), first, tmp / "run1"


def test_report_page_parses_with_every_section_and_hostile_text_inert(report):
    text, figs, _, _ = report
    page = Page()
    page.feed(text)
    page.close()
    ids = {a.get("id") for t, a in page.tags if t == "section"}
    assert ids == {key for key, _ in SECTIONS}
    assert [t for t, _ in page.tags].count("h2") == len(SECTIONS)
    # the hostile candidate is shown, as text: escaped in the source, intact in the parsed text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and HOSTILE in "".join(page.text)
    assert not re.search(r"<\s*script", text, re.I) and "script" not in {t for t, _ in page.tags}
    assert not any(k.startswith("on") for _, a in page.tags for k in a)  # no event handlers
    # no network: no URL scheme or protocol-relative reference anywhere; images are inline PNGs
    assert not re.search(r"https?:|ftp:|file:|\burl\(", text, re.I)
    refs = [v or "" for _, a in page.tags for k, v in a.items() if k in ("src", "href", "action", "srcset")]
    assert refs and all(v.startswith(("#", "data:image/png;base64,")) for v in refs)  # never "//host"
    imgs = [a["src"] for t, a in page.tags if t == "img"]
    assert len(imgs) >= 7 and all(src.startswith("data:image/png;base64,") for src in imgs)
    for src in imgs:
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    # nothing to measure is said, not drawn as 0: no pairwise judge here
    assert figs["bias"]["overall"]["swap_consistency"] is None and "no pairwise comparison" in text


def test_report_figures_agree_with_the_run(report):
    _, figs, summary, run_dir = report
    assert figs["totals"]["pairs"] == summary["pairs"] > 0
    kinds = {}
    for s in figs["counts"]["series"]:
        kinds[s["kind"]] = kinds.get(s["kind"], 0) + s["total"]
        assert s["objective"] == "report-echo@1"
    assert kinds == summary["records"]
    # the length figures, recomputed from preferences.jsonl (TRL lines) independently
    lines = [json.loads(x) for x in (run_dir / "preferences.jsonl").read_text().splitlines()]
    diffs = [sum(len(m["content"]) for m in x["chosen"]) - sum(len(m["content"]) for m in x["rejected"]) for x in lines]
    corr = statistics.correlation(diffs, [x["margin"] for x in lines])
    assert figs["length"]["length_margin_corr"] == pytest.approx(corr) and corr > 0
    assert figs["length"]["pairs"] == len(lines) and len(figs["length"]["points"]) == len(lines)
    # verifier pass rates per source: the two long candidates repeat the answer, the short ones do not
    rows = {(r["source"], r["verifier"]): r for r in figs["verifiers"]["rows"]}
    assert set(rows) == {(SOURCE, "math"), ("arith", "math")}
    assert (rows[SOURCE, "math"]["candidates"], rows[SOURCE, "math"]["passed"]) == (4, 2)
    assert rows["arith", "math"]["pass_rate"] == 0.5 and rows["arith", "math"]["prompts_solved"] == 2
    # every evaluator's histogram holds what it scored; math only ever 0 or 1
    for name, row in figs["scores"]["evaluators"].items():
        assert sum(row["histogram"]) == row["count"], name
    math_hist = figs["scores"]["evaluators"]["math"]["histogram"]
    assert sum(math_hist[1:10]) == 0 and math_hist[0] > 0 and math_hist[10] > 0
    assert sum(figs["margins"]["ensemble"]["histogram"]) == summary["pairs"]
    assert figs["margins"]["evaluators"]["length"]["agrees"] == 1.0  # the longer side always won here
    # dead letters: the two broken prompts, with their reasons
    dl = figs["deadletters"]
    assert dl["total"] == summary["dead_letters"] == 2
    reasons = " | ".join(t["reason"] for t in dl["top"])
    assert "assistant turn" in reasons and "no-such-objective" in reasons
    # agreement: symmetric, the diagonal 1 where an evaluator ordered anything
    m, names = figs["agreement"]["agreement"], figs["agreement"]["evaluators"]
    assert {"math", "length"} <= set(names)
    assert all(m[i][j] == m[j][i] for i in range(len(names)) for j in range(len(names)))
    i, j = names.index("math"), names.index("length")
    assert m[i][i] == 1.0 and m[i][j] == 1.0  # wherever math told two apart, the longer one passed
    assert figs["bias"]["overall"]["tie_rate"] is not None
    samples = figs["samples"]["pairs"]
    assert len(samples) == min(8, summary["pairs"])
    hostile = [p for p in samples if p["prompt_id"] == "p-rep-hostile"]
    assert hostile and HOSTILE in hostile[0]["chosen"] and hostile[0]["model_chosen"] == "echo-long"
    assert any("matches reference '5'" in s["rationale"] for s in hostile[0]["scores_chosen"])
    assert main(["report", str(run_dir), "--objective", "no-such-objective", "--json"]) == 2  # names nothing


def test_report_from_the_topics_shows_both_objective_versions(runs):
    s, tmp, first, second = runs
    src = asyncio.run(load_topics(s, from_settings(s)))
    figs = figures(src)
    refs = [r["objective"] for r in figs["counts"]["by_objective"]]
    assert refs == ["report-echo@1", "report-echo@2"]
    totals = {}
    for series in figs["counts"]["series"]:
        totals.setdefault(series["objective"], {})[series["kind"]] = series["total"]
    assert totals == {"report-echo@1": first["records"], "report-echo@2": second["records"]}
    assert "unpaired" in totals["report-echo@2"]  # version 2 turned KTO on
    only = figures(src, objective="report-echo@1")
    assert only["totals"]["records"] == sum(first["records"].values())
    assert only["deadletters"]["total"] == 1  # the assistant-turn prompt named it; the other named none that exists
    html = render(figs)
    assert "report-echo@2" in html and not re.search(r"<\s*script|https?:", html, re.I)
    # the CLI: --topic with --objective, figures as JSON on stdout
    proc = subprocess.run([sys.executable, "-m", "streams.commands.cli", "report", "--topic", "--objective", "report-echo",
                           "--json"], cwd=ROOT, env=settings_env(s), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["totals"]["records"] == sum(first["records"].values()) + sum(
        second["records"].values())


def test_report_cli_errors_name_the_fix(tmp_path, capsys):
    def cli(*args) -> tuple[int, str]:
        code = main(["report", *args])
        return code, capsys.readouterr().err

    code, err = cli(str(tmp_path), "--out", str(tmp_path / "r.html"))
    assert code == 2 and "judgments.jsonl" in err and "--topic" in err
    code, err = cli(str(tmp_path))
    assert code == 2 and "--out report.html" in err
    code, err = cli(str(tmp_path), "--topic", "--json")
    assert code == 2 and "one of the two" in err
    (tmp_path / "judgments.jsonl").write_text('{"type": "judged.v1", "id": 3}\n')
    for name in ("records.jsonl", "outcomes.jsonl", "deadletters.jsonl"):
        (tmp_path / name).write_text("")
    code, err = cli(str(tmp_path), "--json")
    assert code == 2 and "judgments.jsonl:1" in err
    code, err = cli(str(tmp_path / "judgments.jsonl"), "--json")
    assert code == 2 and "not a directory" in err
    assert not (tmp_path / "r.html").exists()


def test_an_empty_source_says_nothing_to_measure_in_every_section():
    figs = figures(Sources("nowhere"))
    json.dumps(figs, allow_nan=False)
    assert figs["length"]["length_margin_corr"] is None and figs["bias"]["overall"]["tie_rate"] is None
    assert figs["verifiers"]["rows"] == [] and figs["agreement"]["evaluators"] == []
    page = render(figs)
    for key, _ in SECTIONS:
        section = page.split(f'<section id="{key}">', 1)[1].split("</section>", 1)[0]
        assert "Nothing to" in section and "<img" not in section, key


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("screenshot_report", ROOT / "scripts" / "screenshot_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_report_opens_in_headless_chromium_with_no_network_request(report, tmp_path):
    shot = _screenshot_module()
    if shot.find_chromium() is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium); the page's checks above "
                    "ran without it")
    html_path = tmp_path / "report.html"
    html_path.write_text(report[0])
    result = shot.screenshot(html_path, tmp_path / "report.png", width=1280, height=2400)
    assert result["requests"] == [], result["requests"]  # the page asked for nothing beyond its own file
    assert (result["scripts"], result["broken_images"], result["sections"]) == (0, 0, len(SECTIONS))
    assert result["images"] >= 7 and result["page"][1] > 2400
    # the same probe on a page that does reach out sees it (the check above can fail)
    control = tmp_path / "control.html"
    control.write_text('<!doctype html><section><img src="http://127.0.0.1:9/x.png"></section>')
    seen = shot.screenshot(control, tmp_path / "control.png", height=200)
    assert seen["requests"] == ["http://127.0.0.1:9/x.png"] and seen["broken_images"] == 1
    img = Image.open(tmp_path / "report.png")
    assert img.size == (1280, 2400)
    colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # charts drew, not a blank page
