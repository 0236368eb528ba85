"""Prometheus metrics, built by a factory over a CollectorRegistry; labels are bounded
(agent, topic, outcome)."""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

logger = logging.getLogger(__name__)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_in = Counter("prefstream_messages_in_total", "Messages consumed by an agent",
                                   ["agent", "topic"], registry=r)
        self.messages_out = Counter("prefstream_messages_out_total", "Messages produced by an agent",
                                    ["agent", "topic"], registry=r)
        self.dead_letters = Counter("prefstream_dead_letters_total", "Messages an agent dead-lettered",
                                    ["agent", "topic", "outcome"], registry=r)
        self.processing = Histogram("prefstream_processing_seconds", "Time to process one message",
                                    ["agent"], registry=r,
                                    buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120))
        self.outcomes = Counter("prefstream_outcomes_total", "How prompts ended",
                                ["objective", "outcome"], registry=r)

    def serve(self, port: int) -> None:
        """Expose /metrics on 127.0.0.1:port (0 = off)."""
        if port:
            start_http_server(port, addr="127.0.0.1", registry=self.registry)
            logger.info("metrics on http://127.0.0.1:%d/metrics", port)
