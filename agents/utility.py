"""Prompt utility: how informative each judged set was, a decaying estimate per prompt
family, and the share of generation curate spends on low-utility families.

judgments ──▶ [instantiate] ──▶ prompt-stats ──▶ (curate's background reader) ──▶ FamilyUtility

* ``prompt_stats``: one ``PromptStats`` per judged set. ``utility`` is the mean of the
  informativeness signals the set has: a pair survived (0/1), the score spread (best - worst)
  and, where a verifier scored, ``4 p (1 - p)`` of its pass rate ``p`` (1 at p = 0.5, 0 for
  all-correct or all-wrong sets). A set where everything ties, passes or fails scores 0.
* ``difficulty``: easy / medium / hard from the pass rate (the objective's thresholds).
* ``FamilyUtility``: per (objective name, family) an exponentially decaying mean of utility
  (``decay`` of the old estimate kept per new set) and how many sets it has seen; bounded.
* ``Budget``: at most ``budget`` of the prompts curate lets through for an objective come
  from low-utility families (estimate below ``low`` after ``warmup`` sets). Each prompt of
  another family earns ``budget / (1 - budget)`` of a credit (up to ``burst``); a low-family
  prompt goes through when a whole credit is there and spends it, else it is dropped,
  counted. So a low family keeps exactly that share of generation (it is a floor as well as
  a ceiling, and its estimate can recover), smoothly, with no catch-up bursts.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict

from schemas import InstantiationSpec, JudgedSet, Outcome, Prompt
from schemas.objectives import UtilitySpec
from schemas.stats import PromptStats

logger = logging.getLogger(__name__)

MAX_FAMILIES = 10_000
# how many recent prompts curate remembers for replays (a decision, a stats message counted):
# a worker replays at most what it had taken but not committed, a few thousand prompts
REPLAY_MEMORY = 20_000
EPS = 1e-9


def tags_family(prompt: Prompt) -> str:
    return "+".join(sorted(set(prompt.tags))) or "untagged"


def family_of(prompt: Prompt) -> str:
    """The family curate assigned (``metadata.family``), else the prompt's tags."""
    fam = prompt.metadata.get("family")
    return fam if isinstance(fam, str) and fam else tags_family(prompt)


def pass_rate(jset: JudgedSet) -> float | None:
    verified = [j.verified for j in jset.judged if j.verified is not None]
    return sum(verified) / len(verified) if verified else None


def difficulty(rate: float | None, spec: InstantiationSpec) -> str | None:
    if rate is None:
        return None
    if rate + EPS >= spec.easy_pass_rate:
        return "easy"
    return "hard" if rate - EPS <= spec.hard_pass_rate else "medium"


def utility(paired: bool, spread: float, rate: float | None) -> float:
    signals = [1.0 if paired else 0.0, max(0.0, min(1.0, spread))]
    if rate is not None:
        signals.append(4.0 * rate * (1.0 - rate))
    return round(sum(signals) / len(signals), 6)


def prompt_stats(jset: JudgedSet, outcome: Outcome) -> PromptStats:
    """How informative ``jset`` was, given how instantiation ended it."""
    scores = [j.score for j in jset.judged if j.score is not None]
    spread = max(scores) - min(scores) if scores else 0.0
    pairs = outcome.counts.get("pairs", 0)
    rate = pass_rate(jset)
    return PromptStats(
        prompt_id=jset.prompt.id, objective=jset.objective.ref, family=family_of(jset.prompt),
        candidates=len(jset.judged), scored=len(scores),
        distinct=len({j.candidate.text.strip() for j in jset.judged}), spread=round(spread, 6),
        paired=pairs > 0, pairs=pairs, pass_rate=None if rate is None else round(rate, 6),
        difficulty=difficulty(rate, jset.objective.instantiation), utility=utility(pairs > 0, spread, rate),
        created_at=time.time())


class FamilyUtility:
    """Decaying utility per (objective name, family), the least recently seen forgotten first."""

    def __init__(self, max_families: int = MAX_FAMILIES) -> None:
        self.max_families = max_families
        self.estimates: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self.seen: OrderedDict[tuple[str, str], None] = OrderedDict()  # (objective ref, prompt id): once each

    def observe(self, stats: PromptStats, decay: float) -> None:
        once = (stats.objective, stats.prompt_id)
        if once in self.seen:  # a re-delivered stats message counts once
            return
        self.seen[once] = None
        if len(self.seen) > REPLAY_MEMORY:
            self.seen.popitem(last=False)
        key = (stats.objective.rsplit("@", 1)[0], stats.family)
        old, n = self.estimates.pop(key, (stats.utility, 0))
        value = stats.utility if n == 0 else decay * old + (1.0 - decay) * stats.utility
        self.estimates[key] = (value, n + 1)
        if len(self.estimates) > self.max_families:
            self.estimates.popitem(last=False)

    def estimate(self, objective: str, family: str) -> tuple[float | None, int]:
        """``(decayed utility or None, judged sets seen)``."""
        value, n = self.estimates.get((objective, family), (None, 0))
        return value, n

    def is_low(self, objective: str, family: str, spec: UtilitySpec) -> bool:
        value, n = self.estimate(objective, family)
        return value is not None and n >= spec.warmup and value < spec.low


class Budget:
    """Credits that keep low-utility families at ``budget`` of the generation let through."""

    def __init__(self, burst: float = 3.0) -> None:
        self.burst, self.credit = burst, 0.0
        self.low, self.total = 0, 0  # prompts let through: from low families, in all

    def admit(self, low: bool, budget: float) -> bool:
        if low and budget < 1.0:
            if self.credit < 1.0 - EPS:
                return False
            self.credit -= 1.0
        elif not low and budget > 0.0:
            self.credit = min(self.burst, self.credit + (budget / (1.0 - budget) if budget < 1.0 else self.burst))
        self.low += low
        self.total += 1
        return True

    def share(self) -> float:
        return self.low / self.total if self.total else 0.0


async def follow(settings, topics, families: FamilyUtility, decay_of) -> None:
    """Read ``prompt-stats`` from the start, forever, into ``families``; ``decay_of(name)``
    is the decay the objective asks for. Rebuilds the estimates after a restart."""
    from streams.admin import follow as follow_topic

    await follow_topic(settings, getattr(topics, "prompt-stats"),
                       lambda stats: families.observe(stats, decay_of(stats.objective.rsplit("@", 1)[0])))


class Clusters:
    """Online leader clustering for ``family: cluster``: a prompt joins the cluster whose
    first prompt is most similar (cosine >= threshold), else starts one named after itself
    (``cluster:<prompt id>``). The oldest clusters are forgotten beyond ``max_clusters``."""

    def __init__(self, max_clusters: int = 1000) -> None:
        self.max_clusters = max_clusters
        self.names: list[str] = []
        self.vectors: list = []

    def assign(self, prompt_id: str, vector, threshold: float) -> str:
        if self.vectors:
            import numpy as np

            sims = np.stack(self.vectors) @ vector
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                return self.names[best]
        self.names.append(f"cluster:{prompt_id}")
        self.vectors.append(vector)
        if len(self.names) > self.max_clusters:
            self.names.pop(0)
            self.vectors.pop(0)
        return self.names[-1]
