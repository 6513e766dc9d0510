"""A recommendation request, from the HTTP body to the beam search: one model, checked once, and the one
error type a caller gets back (with its HTTP status)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from deepinterestgr.config import ServeConfig


class RequestError(ValueError):
    """A request the service cannot answer as sent; `status` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class RecommendRequest(BaseModel):
    """`POST /v1/recommend`: a known `user_id`, or a `history` of item ids (oldest first), and `k` items."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = None
    history: list[str] | None = None
    k: int = Field(10, ge=1)
    exclude_history: bool = False

    @field_validator("k")
    @classmethod
    def _k_within_limit(cls, k: int, info: ValidationInfo) -> int:
        limit = (info.context or {}).get("max_k")
        if limit is not None and k > limit:
            raise ValueError(f"{k} is above the maximum of {limit}")
        return k

    @field_validator("history")
    @classmethod
    def _history_within_limit(cls, history: list[str] | None, info: ValidationInfo) -> list[str] | None:
        limit = (info.context or {}).get("max_history")
        if history is not None and limit is not None and len(history) > limit:
            raise ValueError(f"{len(history)} items is above the maximum of {limit}")
        return history

    @model_validator(mode="after")
    def _one_source(self) -> "RecommendRequest":
        if (self.user_id is None) == (self.history is None):
            raise ValueError("send exactly one of user_id or history")
        return self

    @classmethod
    def parse(cls, body: object, limits: ServeConfig | None = None) -> "RecommendRequest":
        """A validated request within the service's limits (`serve.max_k`, `serve.max_history`), else a
        RequestError 422 naming each invalid field."""
        context = {"max_k": limits.max_k, "max_history": limits.max_history} if limits is not None else None
        try:
            return cls.model_validate(body, context=context)
        except ValidationError as error:
            raise RequestError(422, describe_errors(error)) from None


def describe_errors(error: ValidationError) -> str:
    """One line per invalid field: `k: Input should be greater than or equal to 1`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in item['loc']) or 'body'}: {item['msg'].removeprefix('Value error, ')}" for item in error.errors()
    )
