"""ktrdr: trading-strategy research on a NATS JetStream worker fleet."""

__version__ = "0.1.0"
