"""The runtime every ktrdr process shares: connection, JetStream topology, the worker runtime."""
