"""The backtest worker: CPU, scales out; serves ``jobs.backtest.cpu`` and ``jobs.dummy.any``."""
