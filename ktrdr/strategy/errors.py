"""The one exception a strategy file raises, naming the file and every bad field."""

from __future__ import annotations


class StrategyError(ValueError):
    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        lines = "\n".join(f"  {field or '<document>'}: {msg}" for field, msg in problems)
        super().__init__(f"invalid strategy {source}:\n{lines}")
        self.source = source
        self.problems = problems

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.problems]


class UnknownStrategyError(StrategyError):
    """A request's strategy that is no packaged name, no file of the strategies directory and no YAML
    text: one message, whatever exists on the host under that name."""

    def __init__(self, source: str, message: str) -> None:
        ValueError.__init__(self, message)
        self.source = source
        self.problems = [("", message)]
