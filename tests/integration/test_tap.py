"""The training tap for real: shard commit and recovery, a `prefstream tap` process killed
with SIGKILL mid-stream three times (each record ends up in the files exactly once), the
streaming API, and a real pipeline run whose trl-dpo and trl-kto output drive one real
`trl.DPOTrainer` and `trl.KTOTrainer` step on a tiny randomly initialised model."""
from __future__ import annotations

import asyncio
import copy
import json
import math
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from schemas import (EvaluationSpec, EvaluatorSpec, GeneratorSpec, InstantiationSpec, Message, ObjectiveSpec,
                     PreferenceRecord, Prompt, Side, SynthesisSpec, UnpairedRecord, Verification)
from streams.admin import create_topics, producer
from streams.commands.tap.dataset import iterable_dataset, records, rows
from streams.commands.tap.formats import FormatError, get
from streams.commands.run import run
from streams.commands.tap.follow import DatasetSink, JsonlSink, Rotation
from streams.topics import from_settings
from tests.conftest import ROOT, settings_env


def pair(i: int, objective: str = "o@1") -> PreferenceRecord:
    side = Side(candidate_id=f"c{i}a", model="gen-a", score=1.0)
    return PreferenceRecord(id=f"r-pair-{i:06d}", prompt_id=f"p{i % 97}", objective=objective,
                            prompt=[Message(role="user", content=f"question {i} " + "words " * 20)],
                            chosen=[Message(role="assistant", content=f"good answer {i}")],
                            rejected=[Message(role="assistant", content=f"bad answer {i}")],
                            score_chosen=1.0, score_rejected=0.0, margin=1.0, chosen_side=side,
                            rejected_side=Side(candidate_id=f"c{i}b", model="gen-b", score=0.0))


def unpaired(i: int) -> UnpairedRecord:
    return UnpairedRecord(id=f"r-unp-{i:06d}", prompt_id=f"p{i}", objective="o@1",
                          prompt=[Message(role="user", content=f"q{i}")],
                          completion=[Message(role="assistant", content="a")], label=i % 2 == 0,
                          side=Side(candidate_id="c", model="gen-a", score=float(i % 2 == 0)))


def committed_ids(out: Path) -> list[str]:
    return [json.loads(line)["id"] for p in sorted((out / "jsonl").glob("shard-*.jsonl")) for line in p.open()]


def parquet_ids(out: Path) -> list[str]:
    return pq.read_table(out / "data", columns=["id"]).column("id").to_pylist() if list(
        (out / "data").glob("*.parquet")) else []


def card_records(out: Path) -> int:
    text = (out / "README.md").read_text()
    return int(text.split("| records | prompts | shards | updated |\n| --- | --- | --- | --- |\n| ")[1].split(" |")[0])


# --- the shard protocol, in process -------------------------------------------------------

def test_shards_commit_atomically_and_recover_from_every_crash_point(tmp_path):
    out, fmt = tmp_path / "ds", get("trl-dpo")
    sink = DatasetSink(out, fmt, Rotation(max_bytes=4000, max_seconds=3600))
    assert sum(sink.write(pair(i)) for i in range(60)) == 60
    assert not sink.write(pair(3)) and not sink.write(unpaired(1))  # a duplicate; another kind
    sink.close()
    shards = sorted((out / "data").glob("train-*.parquet"))
    assert len(shards) > 3 and sorted(committed_ids(out)) == sorted(parquet_ids(out))
    # crash states: between the two renames (JSONL in place, Parquet not), a Parquet never
    # committed (no JSONL twin), and half-written temporary files
    victim = shards[1]
    victim.unlink()
    (out / "data" / "train-000999.parquet").write_bytes(shards[0].read_bytes())
    (out / ".tmp" / "shard-000998.jsonl").write_text('{"id": "r-pair-000001", "torn')
    sink = DatasetSink(out, fmt, Rotation(max_bytes=4000, max_seconds=3600))
    assert victim.exists() and not (out / "data" / "train-000999.parquet").exists()
    assert not list((out / ".tmp").iterdir())
    assert sum(sink.write(pair(i)) for i in range(80)) == 20  # only the 20 new ones
    sink.close()
    ids = committed_ids(out)
    assert sorted(ids) == sorted(parquet_ids(out)) == [pair(i).id for i in range(80)]
    ds = datasets.load_dataset("parquet", data_dir=str(out))["train"]
    assert ds.num_rows == 80 and sorted(ds["id"]) == sorted(ids)
    assert ds[0]["prompt"][0]["role"] == "user" and ds[0]["chosen"][0]["role"] == "assistant"
    assert card_records(out) == 80 and "`o@1` | 80" in (out / "README.md").read_text()
    with pytest.raises(FormatError, match="another --out"):
        DatasetSink(out, get("trl-kto"))
    writer = DatasetSink(out, fmt)
    with pytest.raises(FormatError, match="another tap is writing"):
        DatasetSink(out, fmt)
    writer.close()


def test_time_rotation_commits_a_small_shard(tmp_path):
    sink = DatasetSink(tmp_path, get("trl-kto", "standard"), Rotation(max_bytes=1 << 30, max_seconds=0.2))
    sink.write(unpaired(0))
    sink.write(unpaired(1))
    sink.flush()
    assert committed_ids(tmp_path) == []
    deadline = time.monotonic() + 10
    while not committed_ids(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
        sink.flush()
    assert committed_ids(tmp_path) == ["r-unp-000000", "r-unp-000001"]
    text = (tmp_path / "README.md").read_text()
    assert "1 desirable, 1 undesirable" in text
    sink.close()


def test_preferences_jsonl_cuts_a_torn_last_line_and_never_repeats_a_record(tmp_path):
    sink = JsonlSink(tmp_path)
    assert sink.write(pair(0)) and not sink.write(unpaired(0))  # pairs only, as today
    sink.close()
    with (tmp_path / "preferences.jsonl").open("a") as f:
        f.write('{"id": "r-pair-000001", "prompt": [')  # a crash mid-write
    sink = JsonlSink(tmp_path)
    assert not sink.write(pair(0)) and sink.write(pair(1))
    sink.close()
    lines = [json.loads(line) for line in (tmp_path / "preferences.jsonl").open()]
    assert [x["id"] for x in lines] == [pair(0).id, pair(1).id] and lines[0] == pair(0).trl()


def send(settings, batch) -> None:
    async def go():
        p = producer(settings)
        await p.start()
        t = from_settings(settings).preferences
        try:
            for r in batch:
                await p.send_and_wait(t.name, t.codec.encode(r), key=r.prompt_id.encode())
        finally:
            await p.stop()

    asyncio.run(go())


def test_a_trainer_consumes_the_stream_while_records_arrive(settings):
    asyncio.run(create_topics(settings, from_settings(settings)))
    send(settings, [unpaired(i) for i in range(5)] + [pair(0)])
    stream = rows(settings, "trl-kto", "standard", idle_timeout_s=3)
    first = [next(stream) for _ in range(5)]
    send(settings, [unpaired(i) for i in range(8)])  # 3 new, 5 delivered again
    later = [next(stream) for _ in range(3)]
    assert list(stream) == []  # nothing more until it has been idle 3 s: no record twice
    assert {r["id"] for r in first} == {unpaired(i).id for i in range(5)}
    assert {r["id"] for r in later} == {unpaired(i).id for i in range(5, 8)}
    assert all(isinstance(r["prompt"], str) and isinstance(r["label"], bool) for r in first + later)


# --- a real `prefstream tap`, killed with SIGKILL mid-stream ---------------------------------

class Producer(threading.Thread):
    """Sends pairs and unpaired records in small batches until stopped, some twice (the bus
    delivers at least once); remembers the pair ids it sent."""

    def __init__(self, settings) -> None:
        super().__init__(daemon=True)
        self.settings, self.topics = settings, from_settings(settings)
        self.halt = threading.Event()
        self.pair_ids: set[str] = set()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._send())
        except BaseException as e:
            self.error = e

    async def _send(self) -> None:
        p = producer(self.settings)
        await p.start()
        t, i = self.topics.preferences, 0
        try:
            while not self.halt.is_set():
                batch = [pair(i + k) for k in range(40)] + [unpaired(i + k) for k in range(5)]
                batch += random.sample(batch, 6)
                for r in batch:
                    await p.send(t.name, t.codec.encode(r), key=r.prompt_id.encode())
                await p.flush()
                self.pair_ids.update(r.id for r in batch if r.kind == "pair")
                i += 40
                await asyncio.sleep(0.05)
        finally:
            await p.stop()


def start_tap(settings, out: Path, log: Path, fmt: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streams.commands.cli", "tap", "--out", str(out), "--rotate-mb", "0.01", "--rotate-s", "0.2"]
    cmd += ["--format", fmt] if fmt else []
    return subprocess.Popen(cmd, cwd=ROOT, env=settings_env(settings), stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(cond, what: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the tap exited ({proc.returncode}): {log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill_three_times_then_finish(settings, out: Path, log: Path, fmt: str | None, ids_of) -> set[str]:
    """Run `prefstream tap` while records arrive, SIGKILL it three times once it has made
    progress, then let a fourth run write everything and stop it cleanly. Returns the pair ids sent."""
    asyncio.run(create_topics(settings, from_settings(settings)))
    prod = Producer(settings)
    prod.start()
    proc = None
    try:
        kills = []
        for _ in range(3):
            before = len(ids_of(out))
            proc = start_tap(settings, out, log, fmt)
            wait_for(lambda: len(ids_of(out)) > before, "the tap to write", proc, log)
            time.sleep(random.uniform(0, 0.3))  # land the kill anywhere in the write/commit cycle
            assert prod.is_alive(), prod.error
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills.append(len(ids_of(out)))
        # the stream goes on past the last kill (the tap may have caught up just before it), so
        # the fourth run has records none of the killed ones saw
        deadline = time.monotonic() + 30
        while len(prod.pair_ids) <= kills[-1] and prod.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        prod.halt.set()
        prod.join(30)
        assert prod.error is None and len(prod.pair_ids) > kills[-1]  # the kills came mid-stream
        proc = start_tap(settings, out, log, fmt)
        wait_for(lambda: set(ids_of(out)) >= prod.pair_ids, "every record", proc, log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        prod.halt.set()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return prod.pair_ids


def test_tap_killed_three_times_mid_stream_writes_each_record_once(settings, tmp_path):
    out = tmp_path / "dpo"
    sent = kill_three_times_then_finish(settings, out, tmp_path / "tap.log", "trl-dpo",
                                        lambda d: committed_ids(d) if d.exists() else [])
    ids = committed_ids(out)
    assert len(ids) == len(set(ids)) and set(ids) == sent
    pids = parquet_ids(out)
    assert len(pids) == len(set(pids)) and set(pids) == sent
    ds = datasets.load_dataset("parquet", data_dir=str(out))["train"]
    assert ds.num_rows == len(sent) and set(ds["id"]) == sent
    assert card_records(out) == len(sent)
    assert not list((out / ".tmp").iterdir())


def complete_lines(out: Path) -> list[str]:
    path = out / "preferences.jsonl"
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line)["id"] for line in data[: data.rfind(b"\n") + 1].splitlines()]


def test_plain_tap_killed_three_times_mid_stream_writes_each_record_once(settings, tmp_path):
    out = tmp_path / "plain"
    sent = kill_three_times_then_finish(settings, out, tmp_path / "tap.log", None, complete_lines)
    ids = complete_lines(out)
    assert len(ids) == len(set(ids)) and set(ids) == sent
    assert (out / "preferences.jsonl").read_bytes().endswith(b"\n")


# --- a real pipeline run → trl-dpo / trl-kto → one real TRL step each -----------------------

# The echo backend with max_tokens=2 writes "Candidate 0" … "Candidate 3"; the math verifier
# reads the last number, so the candidate whose index is the reference answer passes.
ECHO = ObjectiveSpec(
    name="tap-echo", version=2,
    synthesis=SynthesisSpec(candidates=4, generators=[GeneratorSpec(backend="echo", model="echo", max_tokens=2)]),
    evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]),
    instantiation=InstantiationSpec(pairs="best_vs_each", min_margin=0.5, kto=True))


def echo_prompts() -> list[Prompt]:
    return [Prompt(id=f"p-echo-{i}", messages=[Message(role="user", content=f"Pick the right one, case {word}.")],
                   source="test", verification=Verification(kind="math", answer=answer))
            for i, (word, answer) in enumerate([("one", "1"), ("two", "2"), ("three", "3"), ("none", "9")])]


def tiny_model_and_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<pad>", "<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    hf.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
                        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    cfg = LlamaConfig(vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=hf.pad_token_id, eos_token_id=hf.eos_token_id, bos_token_id=None)
    return LlamaForCausalLM(cfg), hf


def one_step(trainer_cls, config_cls, model, tokenizer, dataset, out: Path) -> float:
    before = copy.deepcopy(model.state_dict())
    args = config_cls(output_dir=str(out), max_steps=1, per_device_train_batch_size=len(dataset), report_to=[],
                      use_cpu=True, save_strategy="no", logging_steps=1, learning_rate=1e-2, seed=0)
    trainer = trainer_cls(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    loss = trainer.train().training_loss
    changed = any(not v.equal(before[k]) for k, v in model.state_dict().items())
    assert changed, "the step did not update the model"
    return loss


def test_pipeline_output_trains_dpo_and_kto_steps(settings, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    out, settings = tmp_path / "run", settings.replace(metrics_port=0)
    summary = run(settings, echo_prompts(), ECHO, out, env=settings_env(settings), progress=False,
                  formats=["trl-dpo", "trl-kto", "openrlhf"])
    # per prompt with an answer in 0..3: the right candidate against each of the 3 others; the
    # prompt no candidate answers gives no pair (all tie) but 4 undesirable KTO examples
    assert summary["records"] == {"pair": 9, "unpaired": 16} and summary["no_pair"] == 0
    assert summary["kto"] == {"desirable": 3, "undesirable": 13}
    assert len((out / "preferences.jsonl").read_text().splitlines()) == 9  # today's file, still written

    dpo = datasets.load_dataset("parquet", data_dir=str(out / "trl-dpo"))["train"]
    kto = datasets.load_dataset("parquet", data_dir=str(out / "trl-kto"))["train"]
    openrlhf = datasets.load_dataset("parquet", data_dir=str(out / "openrlhf"))["train"]
    assert dpo.num_rows == 9 and kto.num_rows == 16 and openrlhf.num_rows == 9
    for row in dpo:
        answer = {"one": "1", "two": "2", "three": "3"}[row["prompt"][0]["content"].split()[-1].rstrip(".")]
        assert row["chosen"][0]["content"] == f"Candidate {answer}" and row["objective"] == "tap-echo@2"
        assert "math" in row["evaluators"] and row["models"] == ["echo"]
    assert sorted(kto["label"]) == [False] * 13 + [True] * 3
    card = (out / "trl-kto" / "README.md").read_text()
    assert "3 desirable, 13 undesirable" in card and "`tap-echo@2` | 16" in card and "`math` | 16" in card

    # the streaming API gives the same rows, from the topic
    streamed = list(rows(settings, "trl-dpo", follow=False))
    assert sorted(r["id"] for r in streamed) == sorted(dpo["id"])
    it = iterable_dataset(settings, "trl-kto", follow=False)
    assert sorted(r["id"] for r in it) == sorted(kto["id"])
    assert {r.kind for r in records(settings, follow=False)} == {"pair", "unpaired"}

    texts = [m["content"] for row in dpo for m in row["prompt"] + row["chosen"] + row["rejected"]]
    model, tokenizer = tiny_model_and_tokenizer(texts)
    assert math.isfinite(one_step(DPOTrainer, DPOConfig, model, tokenizer, dpo, tmp_path / "dpo"))
    assert math.isfinite(one_step(KTOTrainer, KTOConfig, model, tokenizer, kto, tmp_path / "kto"))
