"""``prefstream train``'s loop: follow one objective's pairs, train DPO with LoRA, and every
``every`` new records save the adapter (PEFT + GGUF LoRA), remember the stream position
(``state``) and publish the adapter as the policy's next version.

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
from streams.commands.train import dpo, export
from streams.commands.train.follow import Follower
from streams.commands.train.state import State
from streams.settings import Settings
from streams.topics import from_settings

logger = logging.getLogger(__name__)


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


async def run(settings: Settings, job: Job, stop: asyncio.Event | None = None) -> list[Policy]:
    """Returns the policies published by this call."""
    from peft import get_peft_model_state_dict

    stop = stop or asyncio.Event()
    state = State.load(job.out)
    base = await asyncio.to_thread(dpo.load_base, job.base)
    peft_dir = str(Path(state.adapter) / "peft") if state.adapter else None
    model = await asyncio.to_thread(dpo.with_adapter, base, job.hyper, peft_dir)
    published: list[Policy] = []
    if state.pending:
        published += await _publish(settings, job, state, resumed=True)
    follower = Follower(settings, from_settings(settings), job.objective, state.offsets)
    await follower.start()
    done = 0
    try:
        while not stop.is_set() and (job.rounds is None or done < job.rounds):
            records = await follower.take(job.every, set(state.trained), job.idle_s)
            if not records:
                break
            rows = [r.trl() for r in records]
            stats = await asyncio.to_thread(dpo.train, model, base.tokenizer, rows, job.hyper, job.out / "work")
            state.round += 1
            rdir = job.out / "rounds" / f"{state.round:06d}"
            adapter = get_peft_model_state_dict(model)
            await asyncio.to_thread(export.write_peft, model, rdir / "peft")
            sha = await asyncio.to_thread(export.write_gguf_lora, adapter, rdir / "adapter.gguf",
                                          job.hyper.alpha, base.arch)
            _write_json(rdir / "trained.json", {"ids": [r.id for r in records], "offsets": follower.offsets,
                                                "epoch": state.epoch, **stats})
            state.offsets, state.adapter, state.sha256 = dict(follower.offsets), str(rdir), sha
            state.trained += [r.id for r in records]
            state.steps += stats["steps"]
            state.pending, state.version = True, None
            state.save(job.out)
            published += await _publish(settings, job, state, records=len(records), steps=stats["steps"])
            logger.info("round %d: %d records, %d steps, loss %.4f → %s", state.round, len(records),
                        stats["steps"], stats["loss"], published[-1].ref if published else "-")
            done += 1
            if len(records) < job.every and job.idle_s is not None:
                break  # the stream went idle mid-round
    finally:
        await follower.stop()
    return published


async def _publish(settings: Settings, job: Job, state: State, records: int | None = None,
                   steps: int | None = None, resumed: bool = False) -> list[Policy]:
    from streams.policies import newest_policy, publish_policy

    rdir = Path(state.adapter)
    newest = await newest_policy(settings, job.policy)
    if resumed and newest is not None and newest.sha256 == state.sha256:
        policy = newest  # published before the crash; only the state did not say so
    else:
        trained = json.loads((rdir / "trained.json").read_text())
        provenance = {"records": len(trained["ids"]) if records is None else records,
                      "steps": trained["steps"] if steps is None else steps,
                      "records_total": len(state.trained), "steps_total": state.steps, "round": state.round,
                      "epoch": state.epoch,
                      **{f"preferences/{p}": o for p, o in sorted(state.offsets.items())}}
        policy = await publish_policy(settings, Policy(
            name=job.policy, base_model=job.base_name, adapter_gguf=str((rdir / "adapter.gguf").resolve()),
            adapter_peft=str((rdir / "peft").resolve()), sha256=state.sha256, trained_on=provenance,
            note=f"prefstream train --objective {job.objective}"))
    state.pending, state.version = False, policy.version
    state.save(job.out)
    return [policy] if policy is not newest else []


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
