"""`prefstream train --loss kto`: a KTO pass on the tiny random Gemma changes the adapter; the
labels are weighed as the KTO paper recommends; the follower takes unpaired records for KTO and
pairs for DPO, never the other kind; the trainer trains unpaired records with KTO, names the
loss in each version's provenance and holds a lone record for the next round (never losing it);
the CLI refuses what KTO cannot do, naming the fix."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from schemas import Message, Side, UnpairedRecord
from streams.commands.cli import main
from streams.commands.train import dpo, kto, loop
from streams.commands.train.state import State
from streams.settings import load
from tests.integration.test_tap import pair
from tests.unit.test_train_follow import follower
from tests.unit.test_train_late import StreamFollower, fakes


def unpaired(i: int, label: bool, objective: str = "math@1") -> UnpairedRecord:
    return UnpairedRecord(id=f"u{i}", prompt_id=f"p{i // 2}", objective=objective,
                          prompt=[Message(role="user", content="what is one plus one")],
                          completion=[Message(role="assistant", content="two" if label else "three")], label=label,
                          side=Side(candidate_id=f"c{i}", model="m", score=1.0 if label else 0.0))


def test_the_minority_label_is_weighed_up_within_the_papers_range():
    for labels in ([True] + [False] * 3, [True] * 5 + [False] * 2, [True, False] * 3):
        w_d, w_u = kto.weights(labels)
        n_d, n_u = sum(labels), len(labels) - sum(labels)
        assert 1.0 <= w_d * n_d / (w_u * n_u) <= 4 / 3  # KTO paper, Eq. 8
        assert min(w_d, w_u) == 1.0  # only the minority is weighed up
    assert kto.weights([True] * 3 + [False]) == (1.0, 3.0)
    assert kto.weights([True] * 4) == (1.0, 1.0)  # one label: nothing to balance


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    pytest.importorskip("peft")
    from tests.tiny_gemma import tiny_gemma

    return tiny_gemma(tmp_path_factory.mktemp("tiny"))


def lora_b(model) -> dict:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items() if "lora_B" in k}


def test_a_kto_pass_changes_the_adapter(base_dir, tmp_path):
    base = dpo.load_base(str(base_dir))
    hyper = dpo.Hyper(rank=4, alpha=8.0, lr=1e-2, loss="kto")
    model = dpo.with_adapter(base, hyper)
    rows = [unpaired(i, label).trl() for i, label in enumerate([True, False, False, False, True, False])]
    stats = kto.train(model, base.tokenizer, rows, hyper, tmp_path / "work")
    assert stats["steps"] == 3 and np.isfinite(stats["loss"])
    assert (stats["desirable"], stats["undesirable"], stats["desirable_weight"]) == (2, 4, 2.0)
    after = lora_b(model)
    assert any(v.abs().sum() > 0 for v in after.values()), "lora_B still zero: nothing trained"
    assert list(model.peft_config) == ["default"]  # TRL's frozen "ref" copy is gone after the round

    # one label only trains too (against the KL estimate), from the adapter as it is now
    stats = kto.train(model, base.tokenizer, [unpaired(i, True).trl() for i in range(4)], hyper, tmp_path / "work")
    assert stats["steps"] == 2 and np.isfinite(stats["loss"])
    assert any(not np.allclose(v.numpy(), after[k].numpy()) for k, v in lora_b(model).items())
    with pytest.raises(ValueError, match="at least 2 records"):
        kto.train(model, base.tokenizer, rows[:1], hyper, tmp_path / "work")


def test_the_follower_takes_the_kind_its_loss_trains_on():
    records = [pair(0, "math@1"), unpaired(1, True), unpaired(2, False), pair(3, "math@1"),
               unpaired(4, True, "other@1")]
    f = follower(records)
    f.kinds = frozenset(loop.KINDS["kto"])
    assert [r.id for r in asyncio.run(f.take(5, skip=set(), idle_s=0.2))] == ["u1", "u2"]
    f = follower(records)  # the default: pairs (DPO)
    assert [r.id for r in asyncio.run(f.take(5, skip=set(), idle_s=0.2))] == ["r-pair-000000", "r-pair-000003"]


def test_the_trainer_trains_unpaired_records_with_kto_and_holds_a_lone_one(monkeypatch, tmp_path):
    trained_dpo, trained_kto, published = [], [], []
    fakes(monkeypatch, trained_dpo, published)

    def train(model, tokenizer, rows, hyper, workdir):
        assert all(set(r) >= {"prompt", "completion", "label"} for r in rows)
        trained_kto.append([r["id"] for r in rows])
        return {"steps": 1, "loss": 0.5}

    monkeypatch.setattr(kto, "train", train)
    stream = [unpaired(0, True), pair(1, "math@1"), unpaired(2, False), unpaired(3, True), unpaired(4, False),
              unpaired(5, True)]
    monkeypatch.setattr(StreamFollower, "stream", stream)
    settings = load({}, broker="127.0.0.1:1", namespace="t")
    job = loop.Job(objective="math", policy="tutor", out=tmp_path, base="base.gguf", base_name="base", every=2,
                   idle_s=0.2, hyper=dpo.Hyper(loss="kto"))
    versions = asyncio.run(loop.run(settings, job))
    assert trained_dpo == [] and trained_kto == [["u0", "u2"], ["u3", "u4"]]  # u5 alone: held, not trained
    assert [p.loss for p in versions] == ["kto"] * 3  # v1: the untrained adapter
    assert State.load(tmp_path).offsets == {0: 5}  # not past u5: a restart reads it again

    monkeypatch.setattr(StreamFollower, "stream", stream + [unpaired(6, False)])
    asyncio.run(loop.run(settings, job))
    assert trained_kto[2:] == [["u5", "u6"]]


def test_a_held_record_goes_into_the_next_round_of_the_same_trainer(monkeypatch, tmp_path):
    fakes(monkeypatch, [], [])
    trained: list = []
    monkeypatch.setattr(kto, "train", lambda model, tok, rows, hyper, workdir:
                        trained.append([r["id"] for r in rows]) or {"steps": 1, "loss": 0.5})
    monkeypatch.setattr(StreamFollower, "stream", [unpaired(0, True)])
    job = loop.Job(objective="math", policy="tutor", out=tmp_path, base="base.gguf", base_name="base", every=3,
                   idle_s=0.2, hyper=dpo.Hyper(loss="kto"))

    async def go():
        trainer = loop.Trainer(load({}, broker="127.0.0.1:1", namespace="t"), job)
        await trainer.open()
        first = await trainer.round()  # u0 alone: held
        consumer, codec = trainer.follower.consumer, trainer.follower.topic.codec
        consumer.msgs += [SimpleNamespace(topic=consumer.tp.topic, partition=0, offset=i,
                                          value=codec.encode(unpaired(i, i % 2 == 0))) for i in (1, 2)]
        second = await trainer.round()
        await trainer.close()
        return first, second

    (p1, s1), (p2, s2) = asyncio.run(go())
    assert p1 is None and s1 == {} and trained == [["u0", "u1", "u2"]]
    assert s2["records"] == 3 and p2.trained_on["records"] == 3


def run_cli(capsys, monkeypatch, *argv: str) -> tuple[int, str]:
    monkeypatch.setenv("PREFSTREAM_BROKER", "127.0.0.1:1")
    rc = main(["train", "--objective", "math", "--policy", "tutor", "--loss", "kto", *argv])
    return rc, capsys.readouterr().err


def test_the_cli_refuses_what_kto_cannot_do(capsys, monkeypatch, tmp_path):
    rc, err = run_cli(capsys, monkeypatch, "--sft-weight", "0.5", "--base", str(tmp_path))
    assert rc == 2 and "--sft-weight" in err and "drop it with --loss kto" in err
    rc, err = run_cli(capsys, monkeypatch, "--batch", "1", "--base", str(tmp_path))
    assert rc == 2 and "--loss kto needs --batch and --every of at least 2" in err
    rc, err = run_cli(capsys, monkeypatch, "--every", "1", "--base", str(tmp_path))
    assert rc == 2 and "--loss kto needs --batch and --every of at least 2" in err
