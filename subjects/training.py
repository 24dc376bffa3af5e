"""Parameters of a ``training`` operation: what to train, on which bars, and where to keep it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from subjects.fields import TIMEFRAMES

# A model name is one segment of an object name in the ``models`` store: no '/', no '@'.
MODEL_NAME: Final = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
_SYMBOL: Final = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


def validate_model_name(name: str) -> str:
    if not MODEL_NAME.match(name):
        raise ValueError(f"invalid model name {name!r}: use 1-64 letters, digits, '_', '-' or '.' "
                         "(not first), no '/' or '@'")
    return name


class TrainingParams(BaseModel):
    """``training``: train a neuro-fuzzy strategy's model and store it as a versioned bundle.

    ``symbols`` and ``timeframes`` default to the strategy's ``training_data``; ``epochs``,
    ``seed`` and ``checkpoint_every`` override its ``training`` section.
    """

    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(min_length=1, description="packaged name, file name in the strategies dir or "
                                                     "YAML text; never a path")
    symbols: list[str] | None = Field(default=None, description="one symbol (default: the strategy's)")
    timeframes: list[str] | None = Field(default=None, description="default: the strategy's")
    start: datetime | None = Field(default=None, description="first bar (UTC when naive)")
    end: datetime | None = Field(default=None, description="last bar (UTC when naive)")
    model_name: str | None = Field(default=None, description="registry name (default: the strategy's name)")
    seed: int | None = Field(default=None, ge=0)
    epochs: int | None = Field(default=None, ge=1, le=100_000)
    checkpoint_every: int | None = Field(default=None, ge=1, le=100_000, description="epochs between checkpoints")

    @field_validator("symbols")
    @classmethod
    def _one_symbol(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if len(v) != 1:
            raise ValueError("give exactly one symbol: a model trains on one symbol's bars "
                             "(submit one training per symbol)")
        for s in v:
            if not _SYMBOL.match(s) or s.startswith("."):
                raise ValueError(f"invalid symbol {s!r}: use letters, digits, '.', '_' or '-'")
        return v

    @field_validator("timeframes")
    @classmethod
    def _known_timeframes(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("give at least one timeframe")
        bad = [tf for tf in v if tf not in TIMEFRAMES]
        if bad:
            raise ValueError(f"unknown timeframe(s) {bad}; one of {', '.join(TIMEFRAMES)}")
        return list(dict.fromkeys(v))

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, v: str | None) -> str | None:
        return None if v is None else validate_model_name(v)

    @model_validator(mode="after")
    def _ordered(self) -> TrainingParams:
        if self.start is not None and self.end is not None and _utc(self.start) > _utc(self.end):
            raise ValueError("start is after end")
        return self


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
