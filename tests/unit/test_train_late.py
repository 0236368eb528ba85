"""The trainer and late labels, with the model, the exports and the broker faked: a pair
withdrawn before it is trained is not trained; one withdrawn after it was trained is counted
(``trained_then_withdrawn``) in the state and in the next version's ``trained_on``; the ids taken
back are in the state, so a restart that reads the stream again trains none of them and counts
nothing twice."""
from __future__ import annotations

import asyncio
import hashlib
import sys
from types import SimpleNamespace

import msgspec

from streams.commands.train import dpo, export, loop
from streams.commands.train.follow import Follower
from streams.commands.train.state import State
from streams.metrics import Metrics
from streams.settings import load
from tests.integration.test_tap import pair
from tests.unit.test_train_follow import FakeConsumer, with_policy, withdrawn

STREAM = ([pair(i, "math@1") for i in range(4)]  # round 1
          + [pair(4, "math@1"), withdrawn(1), pair(5, "math@1"), withdrawn(4)]  # 1 after training, 4 before
          + [pair(i, "math@1") for i in range(6, 9)])


class StreamFollower(Follower):
    """Reads ``STREAM`` from its start whatever the stored position (as a restart from an
    older position, or another partition read first, would)."""

    stream = STREAM

    async def start(self) -> None:
        self.consumer = FakeConsumer(self.topic.name, [self.topic.codec.encode(r) for r in self.stream])

    async def stop(self) -> None:
        self.consumer = None


def fakes(monkeypatch, trained: list[list[str]], published: list) -> None:
    def train(model, tokenizer, rows, hyper, workdir):
        trained.append([r["id"] for r in rows])
        return {"steps": 1, "loss": 0.5}

    def write_gguf_lora(state, path, alpha, arch):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(str(path).encode())
        return hashlib.sha256(path.read_bytes()).hexdigest()

    async def publish_policy(settings, policy):
        published.append(msgspec.structs.replace(policy, version=len(published) + 1))
        return published[-1]

    async def newest_policy(settings, name):
        return published[-1] if published else None

    monkeypatch.setattr(dpo, "load_base", lambda path: SimpleNamespace(tokenizer=None, arch="gemma3"))
    monkeypatch.setattr(dpo, "with_adapter", lambda base, hyper, peft_dir: object())
    monkeypatch.setattr(dpo, "train", train)
    monkeypatch.setattr(export, "write_peft", lambda model, path: path.mkdir(parents=True, exist_ok=True))
    monkeypatch.setattr(export, "write_gguf_lora", write_gguf_lora)
    monkeypatch.setitem(sys.modules, "peft", SimpleNamespace(get_peft_model_state_dict=lambda model: {}))
    monkeypatch.setattr("streams.policies.publish_policy", publish_policy)
    monkeypatch.setattr(loop, "newest_policy", newest_policy)
    monkeypatch.setattr(loop, "Follower", StreamFollower)


def test_late_labels_drop_untrained_records_and_count_trained_ones(monkeypatch, tmp_path):
    trained: list[list[str]] = []
    published: list = []
    fakes(monkeypatch, trained, published)
    settings = load({}, broker="127.0.0.1:1", namespace="t")
    job = loop.Job(objective="math", policy="tutor", out=tmp_path, base="base.gguf", base_name="base", every=4,
                   idle_s=0.2)

    versions = asyncio.run(loop.run(settings, job))
    ids = [[f"r-pair-{i:06d}" for i in r] for r in ([0, 1, 2, 3], [5, 6, 7, 8])]
    assert trained == ids  # 4 taken back before it was trained: dropped from round 2
    state = State.load(tmp_path)
    assert state.trained_then_withdrawn == 1 and state.gone == ["r-pair-000001", "r-pair-000004"]
    assert [p.trained_on["trained_then_withdrawn"] for p in versions] == [0, 0, 1]  # v1: the untrained adapter

    again = asyncio.run(loop.run(settings, job))  # the whole stream read again
    assert again == [] and len(trained) == 2
    assert State.load(tmp_path).trained_then_withdrawn == 1


def test_the_trainers_stale_skips_count_on_the_metric(monkeypatch, tmp_path):
    fakes(monkeypatch, trained := [], [])
    # round 1 publishes tutor@2 (v1 is the untrained adapter): then pairs of tutor@1 are 1 behind
    monkeypatch.setattr(StreamFollower, "stream", [pair(i, "math@1") for i in range(2)]
                        + [with_policy(pair(i, "math@1"), 1) for i in range(2, 5)] + [pair(5, "math@1")])
    job = loop.Job(objective="math", policy="tutor", out=tmp_path, base="base.gguf", base_name="base", every=2,
                   idle_s=0.2, max_policy_lag=0)
    m = Metrics()
    asyncio.run(loop.run(load({}, broker="127.0.0.1:1", namespace="t"), job, metrics=m))
    assert trained == [["r-pair-000000", "r-pair-000001"], ["r-pair-000005"]]
    assert m.sample("prefstream_policy_stale_skipped_total", policy="tutor") == 3
