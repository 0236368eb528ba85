"""The pipeline, declared once: each stage, the topic it reads, the topics it writes, its pure
``process`` and its concurrency. The runtime binds this table (``streams.app.build_app``),
``prefstream pipeline`` prints it, ``status`` and the deploy files follow it, and the
README's diagram is checked against it.

Every stage may also write ``deadletters`` (a message that is wrong); ``relabel`` runs in the
``evaluate`` worker (late human labels re-score the sets that worker judged).
"""
from __future__ import annotations

from agents import curate, evaluate, instantiate, relabel, synthesize
from streams.runtime import Pipeline, StageDecl
from streams.topics import (CANDIDATES, CURATED, FEEDBACK, JUDGMENTS, LABELS, OUTCOMES, PREFERENCES,
                            PREFERENCES_SHADOW, PROMPT_STATS, PROMPTS)


def setup(app, ctx, workers: tuple[str, ...]) -> None:
    """What the workers' stages share: the objectives (followed by curate's worker), the
    model backends, the policies and the evaluators (for synthesize and evaluate)."""
    from agents.objectives.registry import ObjectiveRegistry

    ctx.objectives = ObjectiveRegistry(ctx.settings)
    if "curate" in workers:
        @app.task
        async def follow_objectives() -> None:
            await ctx.objectives.follow(ctx.settings, ctx.topics)

    if {"synthesize", "evaluate"} & set(workers):
        from agents.backends import Backends
        from agents.evaluators import build_evaluators
        from streams.policy_registry import PolicyRegistry

        # generators naming a policy take its newest version (evaluate: adaptive sampling's draws)
        ctx.policies = PolicyRegistry()

        @app.task
        async def follow_policies() -> None:
            await ctx.policies.follow(ctx.settings, ctx.topics)

        ctx.backends = Backends(ctx.settings, metrics=ctx.metrics, policies=ctx.policies)
        ctx.evaluators = build_evaluators(ctx.backends, ctx.settings)


PIPELINE = Pipeline(stages=(
    StageDecl("curate", PROMPTS, (CURATED, OUTCOMES), curate.process, curate.bind, "agent_concurrency"),
    StageDecl("synthesize", CURATED, (CANDIDATES,), synthesize.process, synthesize.bind, "max_inflight"),
    StageDecl("evaluate", CANDIDATES, (JUDGMENTS,), evaluate.process, evaluate.bind, "max_inflight"),
    StageDecl("relabel", FEEDBACK, (LABELS, JUDGMENTS), relabel.process, relabel.bind, "max_inflight",
              worker="evaluate"),
    StageDecl("instantiate", JUDGMENTS, (PREFERENCES, PREFERENCES_SHADOW, PROMPT_STATS, OUTCOMES),
              instantiate.process, instantiate.bind, "agent_concurrency"),
), setup=setup)

WORKERS = PIPELINE.workers  # the processes (one Deployment each): curate, synthesize, evaluate, instantiate
