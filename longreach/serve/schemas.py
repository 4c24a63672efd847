"""Request bodies of the OpenAI-compatible endpoints (pydantic).

Like OpenAI's API, unknown fields are ignored (clients send ``user``, ``frequency_penalty``, ...); the
fields that change what is computed are typed and bounded, so a wrong value is a 400 naming the field.
``null`` is accepted wherever OpenAI's own API accepts it and means the default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field

from ..units import MAX_LENGTH

MAX_LOGPROBS = 20  # top_logprobs / logprobs: OpenAI allows 20 on chat, vLLM on both endpoints
MAX_STOP_CHAT = 4  # OpenAI: "up to 4 sequences"
MAX_STOP_COMPLETIONS = 32  # lm-eval sends every `until` string of a task (+ EOS) on /v1/completions
MAX_STOP_CHARS = 1000
MAX_PROMPTS = 1024  # a batch of prompts in one /v1/completions request
MAX_NAME_CHARS = 1000
MAX_SPEC_CHARS = 2000

TokenCount = Annotated[int, Field(ge=0, le=MAX_LENGTH)]
StopText = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
SeedValue = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]


class _Body(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool | None = None


class ChatMessage(_Body):
    """One message: ``content`` is a string or a list of text parts (``{"type": "text", "text": ...}``)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    @pydantic.field_validator("content")
    @classmethod
    def _text_parts(cls, value: Any) -> str | None:
        if not isinstance(value, list):
            return value
        texts = []
        for part in value:
            kind = part.get("type")
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"only text content parts are supported ({{'type': 'text', 'text': ...}}), "
                                 f"got a part of type {str(kind)[:40]!r}")
            texts.append(part["text"])
        return "\n".join(texts)

    @property
    def text(self) -> str:
        return self.content or ""


class _Generation(_Body):
    """Fields both endpoints share."""

    model: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    temperature: float | None = Field(None, ge=0.0, le=2.0)  # None: 1.0, as OpenAI; 0: greedy
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: SeedValue | None = None
    n: int | None = Field(None, ge=1, le=128)  # only 1 is served (checked with a clear message)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    method: str | None = Field(None, max_length=MAX_SPEC_CHARS)  # a longreach method spec (openai: extra_body)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1, max_length=100_000)
    max_tokens: Annotated[int, Field(ge=1, le=MAX_LENGTH)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_LENGTH)] | None = None
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP_CHAT)] | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


class CompletionRequest(_Generation):
    # str | list[str] | token ids | a list of token-id lists: one choice per prompt, in order
    prompt: (str | Annotated[list[int], Field(max_length=MAX_LENGTH)] | list[str]
             | Annotated[list[Annotated[list[int], Field(max_length=MAX_LENGTH)]], Field(max_length=MAX_PROMPTS)])
    max_tokens: TokenCount | None = 16  # 0: score the prompt only (echo + logprobs)
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP_COMPLETIONS)] | None = None
    suffix: str | None = None
    add_special_tokens: bool | None = True  # for text prompts; token ids are used exactly as given

    @pydantic.field_validator("prompt")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if isinstance(value, list) and value and isinstance(value[0], str) and len(value) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        return value


class TokenizeRequest(_Body):
    """``POST /tokenize`` (vLLM's shape; lm-eval's remote tokenizer sends ``prompt`` + ``add_special_tokens``)."""

    model: str | None = Field(None, max_length=MAX_NAME_CHARS)
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = True
    add_generation_prompt: bool | None = True


class DetokenizeRequest(_Body):
    model: str | None = Field(None, max_length=MAX_NAME_CHARS)
    tokens: Annotated[list[int], Field(max_length=MAX_LENGTH)]
