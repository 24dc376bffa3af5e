"""The wire contract: names (``subjects.names``) and payload models (``subjects.models``)."""

from subjects.names import *  # noqa: F401,F403
