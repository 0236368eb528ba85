"""The same work in distilabel 1.5 and in prefstream, in one run on the same machine state.

distilabel: load the prompts from a JSONL file → `TextGeneration` with an instant echo LLM
(N=4 generations per prompt, the texts prefstream's `echo` backend writes) → a `@step` scoring
each generation by length relative to the longest (prefstream's `length` evaluator) →
`FormatTextGenerationDPO` (best vs worst). It runs at distilabel's default batch sizes (50) and
at larger ones (loader `batch_size` and every step's `input_batch_size`), `use_cache=False`,
nothing pushed anywhere, its logging at WARNING. distilabel lives in its own venv,
`benchmarks/.venv-distilabel/` (created once; never prefstream's dependency).

prefstream: the four agents on the embedded broker, one worker, the `echo` objective, timed by
`benchmarks/bus.py`'s `pipeline()` on the same prompts.

    python benchmarks/distilabel.py [--quick] [--prompts N] [--batch-sizes 1000,5000]

distilabel's figure is prompts over the window from the first generation call to the last
DPO-formatted batch (its start-up — process spawn, step loading, reading the file — is reported
apart, as `distilabel_startup_s`; the worker's start-up is likewise outside prefstream's window).
Last line: {"bench": "distilabel", "prefstream_per_s", "distilabel_per_s", "ratio", ...}
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bus import make_prompts, pipeline  # noqa: E402
from benchmarks.common import SHORT_TOKENS, echo_objective, echo_settings, echo_workers  # noqa: E402
from streams.broker import EmbeddedBroker  # noqa: E402

VERSION = "1.5.3"
VENV = ROOT / "benchmarks" / ".venv-distilabel"
MARKER = VENV / f".distilabel-{VERSION}-ok"
N = 4

# Runs inside the distilabel venv: argv = prompts.jsonl, batch size (0 = distilabel's defaults),
# work dir. Prints one JSON line. Each step appends "<tag> <unix time>" per batch to marks.txt.
SCRIPT = r'''
import json, os, sys, time, zlib
T0 = time.time()
from distilabel.models.llms import LLM
from distilabel.pipeline import Pipeline
from distilabel.steps import FormatTextGenerationDPO, LoadDataFromFileSystem, StepInput, step
from distilabel.steps.tasks import TextGeneration
IMPORT_S = time.time() - T0
MARKS = os.path.join(sys.argv[3], "marks.txt")


def mark(tag):
    with open(MARKS, "a") as f:
        f.write(f"{tag} {time.time()}\n")


class EchoLLM(LLM):
    """Instant: N texts per prompt, as prefstream's echo backend writes them; the second half
    cut at __SHORT__ words, as the bench objective's second echo generator."""

    @property
    def model_name(self):
        return "echo"

    def generate(self, inputs, num_generations: int = 1, max_tokens: int = 64):
        mark("gen")
        out = []
        for messages in inputs:
            text = (messages[-1]["content"] or "").rsplit("Question:", 1)[-1].strip()[:200]
            seed = zlib.crc32(text.encode()) % (2**31 - 1024)
            half = (num_generations + 1) // 2
            gens = [" ".join(f"Candidate {i} (seed {seed + i}) answers: {text}".split()
                             [:max_tokens if i < half else __SHORT__]) for i in range(num_generations)]
            out.append({"generations": gens,
                        "statistics": {"input_tokens": [len(text.split())] * num_generations,
                                       "output_tokens": [len(g.split()) for g in gens]}})
        return out


@step(inputs=["generations"], outputs=["ratings"])
def LengthScore(inputs: StepInput):
    """prefstream's `length` evaluator: length relative to the set's longest."""
    for row in inputs:
        longest = max(len(g) for g in row["generations"])
        row["ratings"] = [len(g) / longest if longest else 0.0 for g in row["generations"]]
    mark("score")
    yield inputs


class TimedDPO(FormatTextGenerationDPO):
    def process(self, *inputs: StepInput):
        for batch in super().process(*inputs):
            mark("dpo")
            yield batch


def main():
    data, batch, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sizes = {"batch_size": batch} if batch else {}
    steps = {"input_batch_size": batch} if batch else {}
    with Pipeline(name="prefstream-bench", cache_dir=os.path.join(work, "cache")) as p:
        loader = LoadDataFromFileSystem(data_files=data, **sizes)
        gen = TextGeneration(llm=EchoLLM(), num_generations=__N__, group_generations=True,
                             output_mappings={"generation": "generations"}, **steps)
        score = LengthScore(**steps)
        dpo = TimedDPO(**steps)
        loader >> gen >> score >> dpo
    t = time.time()
    distiset = p.run(use_cache=False)
    end = time.time()
    rows = sum(len(split) for d in distiset.values() for split in d.values())
    marks = [line.split() for line in open(MARKS)]
    first_gen = min(float(s) for tag, s in marks if tag == "gen")
    last_dpo = max(float(s) for tag, s in marks if tag == "dpo")
    import datasets, distilabel, pydantic
    print(json.dumps({"versions": {m.__name__: m.__version__ for m in (distilabel, datasets, pydantic)},
                      "rows": rows, "import_s": IMPORT_S, "run_s": end - t, "startup_s": first_gen - t,
                      "window_s": last_dpo - first_gen, "batches": {k: sum(m[0] == k for m in marks)
                                                                   for k in ("gen", "score", "dpo")}}))


if __name__ == "__main__":
    main()
'''.replace("__N__", str(N)).replace("__SHORT__", str(SHORT_TOKENS))


def ensure_venv() -> float:
    """Create the distilabel venv once; seconds spent (0 when it was there)."""
    py = VENV / "bin" / "python"
    if MARKER.exists() and py.exists():
        return 0.0
    t = time.perf_counter()
    shutil.rmtree(VENV, ignore_errors=True)
    print(f"creating {VENV} with distilabel=={VERSION} (once; takes a minute or two)", flush=True)
    subprocess.run([shutil.which("python3.11") or "python3.11", "-m", "venv", str(VENV)], check=True)
    # distilabel 1.5.3 imports requests (models/image_generation) without declaring it
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"distilabel=={VERSION}", "requests==2.32.3"], check=True)
    subprocess.run([str(py), "-c", f"import distilabel; assert distilabel.__version__ == {VERSION!r}"], check=True)
    MARKER.touch()
    return time.perf_counter() - t


def run_distilabel(data: Path, batch: int, n: int) -> dict:
    """One distilabel pipeline run in a fresh process; prompts/s over the working window."""
    with tempfile.TemporaryDirectory() as work:
        script = Path(work) / "dl_bench.py"
        script.write_text(SCRIPT)
        env = {**os.environ, "DISTILABEL_CACHE_DIR": str(Path(work) / "cache"), "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(Path(work) / "hf"),
               "HF_HOME": str(Path(work) / "hf"), "DISTILABEL_LOG_LEVEL": "WARNING",
               "PYTHONWARNINGS": "ignore"}
        t = time.perf_counter()
        proc = subprocess.run([str(VENV / "bin" / "python"), str(script), str(data), str(batch), work],
                              env=env, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"distilabel run (batch {batch or 'default'}) failed:\n{proc.stderr[-4000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    if r["rows"] != n:
        raise SystemExit(f"distilabel produced {r['rows']} rows for {n} prompts")
    r.update(batch=batch or "default", process_s=wall, per_s=n / r["window_s"], per_s_total=n / r["run_s"])
    return r


def run_prefstream(prompts, workers: int = 1) -> dict:
    """bus.py's pipeline on these prompts: embedded broker, warmed-up workers in one group."""
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        settings = echo_settings(broker.address, "benchdl")
        with echo_workers(settings, Path(tmp), echo_objective(candidates=N), workers) as procs:
            asyncio.run(pipeline(settings, make_prompts(20, "warm"), procs))
            result = asyncio.run(pipeline(settings, prompts, procs))
    if result["prompts"] != len(prompts):  # bus.pipeline() gives up after 600 s; its rate counts those ended
        print(f"warning: prefstream ended {result['prompts']} of {len(prompts)} prompts before the deadline")
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2,000 prompts, batch size 1,000 only")
    ap.add_argument("--prompts", type=int)
    ap.add_argument("--workers", type=int, default=1, help="prefstream worker processes in the group")
    ap.add_argument("--batch-sizes", help="comma-separated larger batch sizes to try (default 1000,5000)")
    args = ap.parse_args()
    n = args.prompts or (2000 if args.quick else 20000)
    sizes = [int(b) for b in (args.batch_sizes or ("1000" if args.quick else "1000,5000")).split(",")]
    setup_s = ensure_venv()
    prompts = make_prompts(n, "run")
    ours = run_prefstream(prompts, args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "prompts.jsonl"
        data.write_text("".join(json.dumps({"id": p.id, "instruction": p.messages[-1].content}) + "\n"
                                for p in prompts))
        runs = [run_distilabel(data, b, n) for b in [0, *sizes]]
    default, best = runs[0], max(runs, key=lambda r: r["per_s"])
    versions = ", ".join(f"{k} {v}" for k, v in default["versions"].items())
    print(f"prompts {n}, N={N} candidates; {versions}; venv setup {setup_s:.0f} s (0 = cached)")
    print(f"{'':<32}{'prompts/s':>10}{'total/s':>10}{'start-up s':>12}{'import s':>10}")
    print(f"{f'prefstream ({args.workers} worker)':<32}{ours['prompts_per_s']:>10.0f}{'':>10}{'':>12}{'':>10}")
    for r in runs:
        label = f"distilabel batch {r['batch']}"
        print(f"{label:<32}{r['per_s']:>10.0f}{r['per_s_total']:>10.0f}{r['startup_s']:>12.1f}{r['import_s']:>10.1f}")
    print("prompts/s: over the working window (distilabel: first generation → last DPO batch); "
          "total/s: over the whole Pipeline.run(), start-up and write-out included")
    print(json.dumps({"bench": "distilabel", "prefstream_per_s": round(ours["prompts_per_s"], 1),
                      "distilabel_per_s": round(best["per_s"], 1), "ratio": round(ours["prompts_per_s"] / best["per_s"], 3),
                      "distilabel_default_per_s": round(default["per_s"], 1),
                      "ratio_default": round(ours["prompts_per_s"] / default["per_s"], 3),
                      "distilabel_startup_s": round(best["startup_s"], 2), "distilabel_import_s": round(best["import_s"], 2),
                      "distilabel_best_batch": best["batch"],
                      "distilabel_total_per_s": {str(r["batch"]): round(r["per_s_total"], 1) for r in runs},
                      "prefstream_p99_ms": round(ours["p99_ms"], 1), "prefstream_ended": ours["prompts"],
                      "prompts": n, "prefstream_workers": args.workers}))


if __name__ == "__main__":
    main()
