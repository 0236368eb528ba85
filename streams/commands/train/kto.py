"""KTO with LoRA on CPU (Ethayarajh et al. 2024): TRL's ``KTOTrainer`` over the same peft model
as ``dpo``, trained on unpaired records (``UnpairedRecord``: one completion, desirable or not),
so every scored candidate counts, even a prompt whose samples all fail.

As in ``dpo``, the reference is the adapter as it is when the round starts: TRL copies it into
a frozen "ref" adapter, dropped after the round (``dpo._drop_ref``).

KTO's loss compares each completion's implied reward with a KL estimate taken from mismatched
(prompt, completion) pairs in the same batch, so a batch needs more than one example
(``MIN_ROWS``; TRL refuses a batch size of 1). The two labels are weighed so that
``desirable_weight × n_desirable = undesirable_weight × n_undesirable`` (``weights``), the lower
end of the KTO paper's recommended range [1, 4/3] (its Eq. 8): the minority label is weighed up.
A round with one label only trains too (TRL allows it: that side's loss against the KL estimate);
it is logged.
"""
from __future__ import annotations

import logging
import os

from streams.commands.train.dpo import Hyper, common_args, fit

logger = logging.getLogger(__name__)

MIN_ROWS = 2  # the KL estimate needs another example's completion in the batch


def weights(labels: list[bool]) -> tuple[float, float]:
    """``(desirable_weight, undesirable_weight)`` for a round with these labels: the minority
    label weighed up to balance the majority; (1, 1) where balanced or one label is absent."""
    n_d = sum(1 for x in labels if x)
    n_u = len(labels) - n_d
    if n_d == 0 or n_u == 0 or n_d == n_u:
        return 1.0, 1.0
    return (n_u / n_d, 1.0) if n_d < n_u else (1.0, n_d / n_u)


def train(model, tokenizer, rows: list[dict], hyper: Hyper, workdir: str | os.PathLike) -> dict:
    """One KTO round against the adapter as it is now: one pass over ``rows`` (TRL's
    conversational unpaired format: ``prompt``, ``completion``, ``label``); returns the steps
    run, the mean loss and the label counts and weights used."""
    import datasets
    from trl import KTOConfig, KTOTrainer

    if len(rows) < MIN_ROWS or hyper.batch < MIN_ROWS:
        raise ValueError(f"KTO needs at least {MIN_ROWS} records per round and per batch (its KL estimate); "
                         f"got {len(rows)} records, batch {hyper.batch}")
    labels = [bool(r["label"]) for r in rows]
    w_d, w_u = weights(labels)
    if len(set(labels)) == 1:
        logger.warning("KTO round with %d %s records only: trained against the KL estimate alone",
                       len(rows), "desirable" if labels[0] else "undesirable")
    data = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"], "label": bool(r["label"])}
                                       for r in rows])
    args = KTOConfig(beta=hyper.beta, desirable_weight=w_d, undesirable_weight=w_u, **common_args(hyper, workdir))
    stats = fit(KTOTrainer, model, tokenizer, args, data)
    return {**stats, "desirable": sum(labels),
            "undesirable": len(labels) - sum(labels), "desirable_weight": w_d, "undesirable_weight": w_u}
