"""Prometheus metrics of the coordinator, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DURATION_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.operations = Gauge("ktrdr_operations", "Operations by type and status",
                                ["type", "status"], registry=r)
        self.dispatch_latency = Histogram(
            "ktrdr_dispatch_latency_seconds", "From submission to a worker starting the op",
            ["type"], buckets=LATENCY_BUCKETS, registry=r)
        self.op_duration = Histogram(
            "ktrdr_operation_duration_seconds", "From start to end of the op", ["type", "status"],
            buckets=DURATION_BUCKETS, registry=r)
        self.queue_depth = Gauge("ktrdr_queue_depth", "Jobs waiting per capability", ["capability"],
                                 registry=r)
        self.workers = Gauge("ktrdr_workers", "Workers by type and state", ["type", "state"], registry=r)
        self.live_pages = Gauge("ktrdr_dashboard_streams", "Dashboard pages connected to the live stream",
                                registry=r)
        self.lease_expiries = Counter("ktrdr_lease_expiries", "Worker leases that expired",
                                      ["type"], registry=r)
        self.rejected = Counter("ktrdr_rejected_messages", "Malformed or invalid messages received",
                                ["subject", "reason"], registry=r)
        self.worker_rejected = Gauge("ktrdr_worker_rejected_messages",
                                     "Malformed messages a worker reported in its lease", ["worker"],
                                     registry=r)
        self.fenced = Counter("ktrdr_fenced_messages", "Progress/events from an attempt that no longer "
                              "owns its operation, ignored", ["kind"], registry=r)
        self.retries = Counter("ktrdr_operation_retries", "Attempts re-dispatched after a lost worker",
                               ["type"], registry=r)
        self.ops_stream_bytes = Gauge("ktrdr_ops_stream_bytes", "Bytes held by the OPS stream (full: new "
                                      "reports are refused until the coordinator makes room)", registry=r)
        self.ops_trimmed = Counter("ktrdr_ops_trimmed_messages", "Applied OPS messages deleted to make room",
                                   registry=r)
        self.swept = Counter("ktrdr_swept_items", "Unreferenced chunks and artifacts deleted from a store",
                             ["store"], registry=r)
        self.cancels_forwarded = Counter("ktrdr_cancels_forwarded", "Cancel requests forwarded to the worker "
                                         "holding the op's claim", registry=r)
        self.api_errors = Counter("ktrdr_api_errors", "Status API requests answered with an error (4xx, 5xx)",
                                  ["status"], registry=r)
