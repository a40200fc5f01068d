"""What a simulated model "computes": validated requests, token counts and generated output.

Everything is deterministic so tests and billing checks can predict usage exactly: a prompt
costs one token per whitespace-separated word (at least one per request), a completion costs
``max_tokens`` (16 when absent) and reads ``"tok0 tok1 ..."``. No I/O, no clock.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

DEFAULT_COMPLETION_TOKENS = 16
MAX_CHOICES = 16  # keeps one request from asking the simulator for unbounded work
DEFAULT_EMBEDDING_DIMENSIONS = 8
MAX_EMBEDDING_DIMENSIONS = 64  # blake2b's largest digest: one byte per dimension

FinishReason = Literal["length", "stop"]
EncodingFormat = Literal["float", "base64"]


class RequestError(Exception):
    """A request the node refuses, carrying the OpenAI-style error body and HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status
        self.type = type

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def model_not_found(model: str) -> RequestError:
    return RequestError(
        f"The model `{model}` does not exist.", param="model", code="model_not_found", status=404
    )


@dataclass(frozen=True, slots=True)
class Generation:
    """A validated chat or text completion request, reduced to what the simulator needs."""

    model: str
    prompt_tokens: int
    choices: int
    tokens_per_choice: int
    finish_reason: FinishReason
    stream: bool
    include_usage: bool

    @property
    def completion_tokens(self) -> int:
        return self.choices * self.tokens_per_choice


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """A validated embeddings request."""

    model: str
    inputs: tuple[str, ...]
    prompt_tokens: int
    dimensions: int
    encoding_format: EncodingFormat


def count_words(text: str) -> int:
    return len(text.split())


def token_text(index: int) -> str:
    """The streamed piece for token ``index``; the pieces concatenate to completion_text."""
    return f"tok{index}" if index == 0 else f" tok{index}"


@lru_cache(maxsize=256)
def completion_text(tokens: int) -> str:
    # Cached: load tests send the same max_tokens over and over.
    return " ".join(f"tok{i}" for i in range(tokens))


def embedding_vector(text: str, *, dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS) -> list[float]:
    """Deterministic floats in [-1, 1), exactly representable as float32 (base64 round-trips)."""
    digest = hashlib.blake2b(text.encode(), digest_size=dimensions).digest()
    return [(byte - 128) / 128 for byte in digest]


def encode_base64(vector: list[float]) -> str:
    """OpenAI's base64 embedding format: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def parse_chat(body: object, *, max_model_len: int) -> Generation:
    fields = _object(body)
    model = _model(fields)
    messages = fields.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array of messages", param="messages")
    words = sum(_message_words(m, index=i) for i, m in enumerate(messages))
    # max_completion_tokens superseded max_tokens in the OpenAI API; vLLM prefers it too.
    name = (
        "max_completion_tokens" if fields.get("max_completion_tokens") is not None else "max_tokens"
    )
    return _generation(
        fields, model=model, words=words, choices=1, limit_param=name, max_model_len=max_model_len
    )


def parse_completion(body: object, *, max_model_len: int) -> Generation:
    fields = _object(body)
    model = _model(fields)
    prompts = _texts(fields.get("prompt"), param="prompt")
    words = sum(count_words(p) for p in prompts)
    # OpenAI answers a list of prompts with one choice per prompt.
    return _generation(
        fields,
        model=model,
        words=words,
        choices=len(prompts),
        limit_param="max_tokens",
        max_model_len=max_model_len,
    )


def parse_embeddings(body: object) -> EmbeddingRequest:
    fields = _object(body)
    model = _model(fields)
    inputs = _texts(fields.get("input"), param="input")
    raw_encoding = fields.get("encoding_format")
    if raw_encoding not in (None, "float", "base64"):
        raise RequestError("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    encoding: EncodingFormat = "base64" if raw_encoding == "base64" else "float"
    dimensions = _positive_int(fields, "dimensions", default=DEFAULT_EMBEDDING_DIMENSIONS)
    if dimensions > MAX_EMBEDDING_DIMENSIONS:
        raise RequestError(
            f"'dimensions' must be at most {MAX_EMBEDDING_DIMENSIONS}", param="dimensions"
        )
    return EmbeddingRequest(
        model=model,
        inputs=inputs,
        prompt_tokens=max(1, sum(count_words(i) for i in inputs)),
        dimensions=dimensions,
        encoding_format=encoding,
    )


def _object(body: object) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object")
    return body


def _model(fields: Mapping[str, Any]) -> str:
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("'model' is required and must be a non-empty string", param="model")
    return model


def _message_words(message: object, *, index: int) -> int:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise RequestError(f"'{param}' must be an object", param=param)
    if not isinstance(message.get("role"), str):
        raise RequestError(f"'{param}.role' must be a string", param=f"{param}.role")
    content = message.get("content")
    if content is None:  # e.g. an assistant turn that only carried tool calls
        return 0
    if isinstance(content, str):
        return count_words(content)
    if not isinstance(content, list):
        raise RequestError(
            f"'{param}.content' must be a string or an array of content parts",
            param=f"{param}.content",
        )
    words = 0
    for j, part in enumerate(content):
        part_param = f"{param}.content[{j}]"
        if not isinstance(part, dict) or part.get("type") != "text":
            raise RequestError(
                f"'{part_param}' must be a text part ({{'type': 'text', 'text': ...}}); "
                "the simulated model reads text only",
                param=part_param,
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise RequestError(f"'{part_param}.text' must be a string", param=f"{part_param}.text")
        words += count_words(text)
    return words


def _texts(value: object, *, param: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RequestError(f"'{param}' must be a string or a non-empty array of strings", param=param)


def _positive_int(fields: Mapping[str, Any], name: str, *, default: int) -> int:
    value = fields.get(name)
    if value is None:
        return default
    # bool is an int subclass; `true` is not a token count.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"'{name}' must be a positive integer, got {value!r}", param=name)
    return value


def _generation(
    fields: Mapping[str, Any],
    *,
    model: str,
    words: int,
    choices: int,
    limit_param: str,
    max_model_len: int,
) -> Generation:
    prompt_tokens = max(1, words)
    n = _positive_int(fields, "n", default=1)
    if n > MAX_CHOICES:
        raise RequestError(f"'n' must be at most {MAX_CHOICES}", param="n")
    requested = fields.get(limit_param)
    tokens = _positive_int(fields, limit_param, default=DEFAULT_COMPLETION_TOKENS)
    if requested is None:
        # Like vLLM, an unspecified limit shrinks to what still fits in the context.
        tokens = min(tokens, max_model_len - prompt_tokens)
    if tokens < 1 or prompt_tokens + tokens > max_model_len:
        raise RequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + max(tokens, 1)} tokens ({prompt_tokens} in the "
            f"prompt, {max(tokens, 1)} in the completion). Please reduce the length of the "
            "prompt or completion.",
            param=limit_param,
            code="context_length_exceeded",
        )
    stream = fields.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean", param="stream")
    return Generation(
        model=model,
        prompt_tokens=prompt_tokens,
        choices=choices * n,
        tokens_per_choice=tokens,
        # A caller-imposed limit is what ends the text; otherwise the "model" chose to stop.
        finish_reason="stop" if requested is None else "length",
        stream=stream,
        include_usage=stream and _include_usage(fields.get("stream_options")),
    )


def _include_usage(options: object) -> bool:
    # stream_options on a non-streaming request is ignored rather than refused: gateways
    # commonly force include_usage on every request so they can bill streams.
    if options is None:
        return False
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    include = options.get("include_usage")
    if include is None:
        return False
    if not isinstance(include, bool):
        raise RequestError(
            "'stream_options.include_usage' must be a boolean",
            param="stream_options.include_usage",
        )
    return include
