"""The CPU training worker: the fallback for ``jobs.training.*``; serves ``jobs.dummy.any`` too."""
