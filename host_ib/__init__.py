"""The Interactive Brokers host: one active instance next to TWS / IB Gateway (``jobs.data.ib``)."""
