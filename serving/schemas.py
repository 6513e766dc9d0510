"""The HTTP API's request body, validated with pydantic so that errors name the field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RecommendRequest(BaseModel):
    """`POST /v1/recommend`: a known `user_id`, or a `history` of item ids (oldest first)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = None
    history: list[str] | None = None
    k: int = Field(10, ge=1)
    exclude_history: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> "RecommendRequest":
        if (self.user_id is None) == (self.history is None):
            raise ValueError("send exactly one of user_id or history")
        return self


def describe_errors(error) -> str:
    """One line per invalid field: `k: Input should be greater than or equal to 1`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in item['loc']) or 'body'}: {item['msg']}" for item in error.errors()
    )
