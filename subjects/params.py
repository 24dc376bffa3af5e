"""Parameters of each operation type: validated by the coordinator before dispatch (a bad request
is a 422 naming the field, never a failed op) and by the worker again before it runs them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DummyParams(BaseModel):
    """``dummy``: a diagnostic op that every worker type serves."""

    model_config = ConfigDict(extra="forbid")

    duration: float = Field(default=5.0, ge=0, le=86_400, description="seconds of simulated work")
    steps: int = Field(default=10, ge=1, le=100_000)
    fail: bool | str = Field(default=False, description="true or an error message: end failed")


# One line per op type. Capabilities add theirs here.
PARAMS_MODELS: dict[str, type[BaseModel]] = {
    "dummy": DummyParams,
}
