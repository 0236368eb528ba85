"""``prefstream train``'s loop: follow one objective's pairs, train DPO with LoRA (or its
unpaired records, KTO: ``Hyper.loss``), and every ``every`` new records save the adapter
(PEFT + GGUF LoRA), remember the stream position (``state``) and publish the adapter as the
policy's next version.

Order per round, so a kill -9 anywhere loses at most the round in progress and never trains a
record twice into the adapters it publishes: train → write the round's adapter files →
``state.json`` (position, ids trained, adapter, ``pending``) → publish → ``state.json``
(``version``). On start a ``pending`` adapter is published first (once: not again when the
newest version already has its sha256).
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from schemas import Policy
from streams.commands.train import dpo, export, kto
from streams.commands.train.follow import Follower
from streams.commands.train.state import State
from streams.policies import newest_policy
from streams.policies.staleness import Staleness
from streams.settings import Settings
from streams.topics import from_settings

logger = logging.getLogger(__name__)

KINDS = {"dpo": ("pair",), "kto": ("unpaired",)}  # the records each loss trains on


@dataclass(frozen=True)
class Job:
    objective: str
    policy: str
    out: Path
    base: str  # the base model: a GGUF file or a transformers directory
    base_name: str  # what the policy records as its base model
    every: int = 16
    hyper: dpo.Hyper = dpo.Hyper()
    rounds: int | None = None  # stop after this many rounds this run (None: follow forever)
    idle_s: float | None = None  # stop when the stream has nothing new for this long (None: wait)
    max_policy_lag: int | None = None  # skip pairs made by a version more than this behind our newest


class Trainer:
    """One policy's trainer: ``open`` (model, adapter and stream position from the state),
    ``round`` as many times as wanted, ``close``."""

    def __init__(self, settings: Settings, job: Job, metrics=None) -> None:
        self.settings, self.job, self.metrics = settings, job, metrics  # metrics: the stale skips
        self.state = State.load(job.out)
        self.base = self.model = self.follower = None
        self.held: list = []  # read, too few for a KTO round: trained with the next round's

    async def open(self) -> list[Policy]:
        """Returns what it published: a pending version (a crash came between save and
        publish), or version 1, the untrained adapter, where the policy has none yet."""
        self.base = await asyncio.to_thread(dpo.load_base, self.job.base)
        peft_dir = str(Path(self.state.adapter) / "peft") if self.state.adapter else None
        self.model = await asyncio.to_thread(dpo.with_adapter, self.base, self.job.hyper, peft_dir)
        published = await _publish(self.settings, self.job, self.state, resumed=True) if self.state.pending else []
        self.staleness = Staleness(self.job.max_policy_lag,
                                   lambda name: self.state.version if name == self.job.policy else None,
                                   self.metrics)
        self.follower = Follower(self.settings, from_settings(self.settings), self.job.objective, self.state.offsets,
                                 keep=self.staleness.keep, gone=self.state.gone, kinds=KINDS[self.job.hyper.loss])
        await self.follower.start()
        if self.state.adapter is None and await newest_policy(self.settings, self.job.policy) is None:
            # version 1 is the base model (a zero LoRA): generators naming the policy can start
            published.append(await self.publish([], {"steps": 0}))
        return published

    async def close(self) -> None:
        if self.follower is not None:
            await self.follower.stop()

    async def round(self) -> tuple[Policy | None, dict]:
        """Trains on up to ``every`` new records and publishes the adapter; (None, {}) when the
        stream had none (``idle_s``), or too few for KTO (held for the next round: the saved
        stream position is not past them, so a restart reads them again)."""
        records = await self._take()
        if not records:
            return None, {}
        if self.job.hyper.loss == "kto" and len(records) < kto.MIN_ROWS:
            self.held = records
            logger.info("holding %d unpaired record(s) for the next round: KTO needs at least %d",
                        len(records), kto.MIN_ROWS)
            return None, {}
        self.held = []
        train = kto.train if self.job.hyper.loss == "kto" else dpo.train
        stats = await asyncio.to_thread(train, self.model, self.base.tokenizer, [r.trl() for r in records],
                                        self.job.hyper, self.job.out / "work")
        stats["skipped_stale"] = self.staleness.skipped
        policy = await self.publish([r.id for r in records], stats)
        logger.info("round %d: %d records, %d steps, loss %.4f → %s", self.state.round, len(records),
                    stats["steps"], stats["loss"], policy.ref)
        return policy, {"records": len(records), **stats}

    async def _take(self) -> list:
        """The records held from the last round (less any a late label took back since) and up to
        ``every`` in all new ones."""
        new = await self.follower.take(self.job.every - len(self.held), set(self.state.trained), self.job.idle_s)
        self._count_late()
        held = [r for r in self.held if r.id not in self.follower.gone]
        return held + [r for r in new if r.id not in {h.id for h in held}]

    def _count_late(self) -> None:
        """Records a late label took back after they were trained: counted (they cannot be
        untrained) and logged; the ids taken back go into the state with the round."""
        late, self.follower.late = self.follower.late, []
        if late:
            self.state.trained_then_withdrawn += len(late)
            logger.warning("%d records trained on before a late label superseded or withdrawn them (%d in all): %s",
                           len(late), self.state.trained_then_withdrawn, ", ".join(late[:10]))

    async def publish(self, ids: list[str], stats: dict) -> Policy:
        """The adapter as it is now (round 0 before any training: the base model's zero LoRA)
        saved in both formats, the state saved, then published."""
        from peft import get_peft_model_state_dict

        state, job = self.state, self.job
        state.round += 1 if ids else 0
        rdir = job.out / "rounds" / f"{state.round:06d}"
        await asyncio.to_thread(export.write_peft, self.model, rdir / "peft")
        sha = await asyncio.to_thread(export.write_gguf_lora, get_peft_model_state_dict(self.model),
                                      rdir / "adapter.gguf", job.hyper.alpha, self.base.arch)
        _write_json(rdir / "trained.json", {"ids": ids, "offsets": self.follower.offsets, "epoch": state.epoch,
                                            **stats})
        state.offsets, state.adapter, state.sha256 = dict(self.follower.offsets), str(rdir), sha
        state.gone = sorted(self.follower.gone)
        state.trained += ids
        state.steps += stats.get("steps", 0)
        state.pending, state.version = True, None
        state.save(job.out)
        return (await _publish(self.settings, job, state, records=len(ids), steps=stats.get("steps", 0)))[0]


async def run(settings: Settings, job: Job, stop: asyncio.Event | None = None, metrics=None) -> list[Policy]:
    """``prefstream train``: rounds until ``stop``, ``job.rounds`` or an idle stream; returns
    the policies published by this call."""
    stop = stop or asyncio.Event()
    trainer = Trainer(settings, job, metrics)
    published = await trainer.open()
    done = 0
    try:
        while not stop.is_set() and (job.rounds is None or done < job.rounds):
            policy, stats = await trainer.round()
            if policy is None:
                break
            published.append(policy)
            done += 1
            if stats["records"] < job.every and job.idle_s is not None:
                break  # the stream went idle mid-round
    finally:
        await trainer.close()
    return published


async def _publish(settings: Settings, job: Job, state: State, records: int | None = None,
                   steps: int | None = None, resumed: bool = False) -> list[Policy]:
    from streams.policies import publish_policy

    rdir = Path(state.adapter)
    newest = await newest_policy(settings, job.policy) if resumed else None
    if newest is not None and newest.sha256 == state.sha256:
        policy = newest  # published before the crash; only the state did not say so
    else:
        trained = json.loads((rdir / "trained.json").read_text())
        provenance = {"records": len(trained["ids"]) if records is None else records,
                      "steps": trained["steps"] if steps is None else steps,
                      "records_total": len(state.trained), "steps_total": state.steps, "round": state.round,
                      "skipped_stale": int(trained.get("skipped_stale", 0)),
                      "trained_then_withdrawn": state.trained_then_withdrawn,
                      "epoch": state.epoch,
                      **{k: int(trained[k]) for k in ("desirable", "undesirable") if k in trained},  # KTO's labels
                      **{f"preferences/{p}": o for p, o in sorted(state.offsets.items())}}
        policy = await publish_policy(settings, Policy(
            name=job.policy, base_model=job.base_name, adapter_gguf=str((rdir / "adapter.gguf").resolve()),
            adapter_peft=str((rdir / "peft").resolve()), sha256=state.sha256, trained_on=provenance,
            loss=job.hyper.loss,
            note=f"prefstream train --objective {job.objective}"))
    state.pending, state.version = False, policy.version
    state.save(job.out)
    return [policy]


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
