"""The receiver's own Prometheus counters (per receiver process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

# Acknowledgement latency buckets around the 200 ms promise (seconds).
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)


class ReceiverMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "acmeq_webhook_requests",
            "Webhook requests by provider and outcome (accepted, duplicate, requeued, rejected, "
            "too_large, unavailable).",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.verification_failures = Counter(
            "acmeq_webhook_verification_failures",
            "Webhook requests refused because the signature or body did not verify.",
            ["provider"],
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "acmeq_webhook_ack_seconds",
            "Time from request to response of webhook requests, per provider.",
            ["provider"],
            buckets=ACK_BUCKETS,
            registry=self.registry,
        )

    def observe(self, provider: str, outcome: str, seconds: float) -> None:
        self.requests.labels(provider, outcome).inc()
        self.ack_seconds.labels(provider).observe(seconds)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The receiver's counters alone (when acmeq's own collectors cannot be read)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
