"""The ``health`` topic: each worker's word on each of its stages — running, or blocked by
its environment (with the reason and the fix). Compacted: the newest per worker and stage."""
from __future__ import annotations

from schemas.base import Wire


class StageHealth(Wire, tag="stage-health.v1", kw_only=True):
    worker: str  # "host:pid"
    stage: str
    blocked: bool = False
    reason: str | None = None  # a bounded label: no_objective, model_missing, backend_down, …
    detail: str = ""
    fix: str = ""
    since: float | None = None  # when the stage became blocked (unix time)
    updated_at: float = 0.0  # workers re-publish every few seconds: an old entry is a gone worker

    @property
    def key(self) -> str:
        return f"{self.worker}/{self.stage}"
