"""The wire contract: names (``subjects.names``), payload models (``subjects.models``)
and the parameters of each operation type (``subjects.params``)."""

from subjects.names import *  # noqa: F401,F403
