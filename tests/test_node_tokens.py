"""The simulated GPU node's token arithmetic (pure): prompt counts, generated text,
request parsing and its errors."""

from __future__ import annotations

import pytest

from crosslogic.node import tokens
from tests.support.system import MODEL


def test_chat_prompt_tokens_count_words_across_messages_and_parts() -> None:
    gen = tokens.parse_chat(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "be  brief"},
                {"role": "user", "content": [{"type": "text", "text": "one two\nthree"}]},
                {"role": "assistant", "content": None},
            ],
            "max_completion_tokens": 5,
            "max_tokens": 99,
        },
        max_model_len=100,
    )
    assert (gen.prompt_tokens, gen.completion_tokens, gen.finish_reason) == (5, 5, "length")
    assert not gen.stream


def test_defaults_minimum_and_list_prompts() -> None:
    gen = tokens.parse_completion({"model": MODEL, "prompt": "   "}, max_model_len=100)
    assert (gen.prompt_tokens, gen.completion_tokens, gen.finish_reason) == (1, 16, "stop")
    gen = tokens.parse_completion(
        {"model": MODEL, "prompt": ["a b", "c"], "max_tokens": 3, "n": 2}, max_model_len=100
    )
    assert (gen.prompt_tokens, gen.choices, gen.completion_tokens) == (3, 4, 12)
    # Without an explicit limit the default shrinks to what fits in the context.
    gen = tokens.parse_completion({"model": MODEL, "prompt": "w " * 95}, max_model_len=100)
    assert gen.completion_tokens == 5
    emb = tokens.parse_embeddings({"model": MODEL, "input": ["a b c", "d", ""]})
    assert (emb.prompt_tokens, emb.inputs, emb.encoding_format) == (4, ("a b c", "d", ""), "float")


def test_generated_text_and_embeddings_are_deterministic() -> None:
    assert tokens.completion_text(3) == "tok0 tok1 tok2"
    assert "".join(tokens.token_text(i) for i in range(3)) == tokens.completion_text(3)
    vector = tokens.embedding_vector("hello")
    assert vector == tokens.embedding_vector("hello") != tokens.embedding_vector("hullo")
    assert len(vector) == 8 and all(-1 <= v < 1 for v in vector)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": 3, "messages": []}, "model"),
        ({"model": MODEL, "messages": "hi"}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": ["hi"]}, "messages[0]"),
        ({"model": MODEL, "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}, None),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": True},
            None,
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 99}, "n"),
        (
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "stream": True,
                "stream_options": {"include_usage": "yes"},
            },
            "stream_options.include_usage",
        ),
        ([1, 2], None),
    ],
)
def test_parse_chat_rejects_bad_input(body: object, param: str | None) -> None:
    with pytest.raises(tokens.RequestError) as info:
        tokens.parse_chat(body, max_model_len=100)
    error = info.value.body()["error"]
    assert info.value.status == 400 and error["type"] == "invalid_request_error"
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    elif isinstance(body, dict) and len(body) > 2:
        assert error["param"] == next(k for k in body if k not in ("model", "messages"))


def test_context_length_and_other_endpoint_errors() -> None:
    with pytest.raises(tokens.RequestError) as info:
        tokens.parse_completion(
            {"model": MODEL, "prompt": "a b", "max_tokens": 99}, max_model_len=100
        )
    assert info.value.code == "context_length_exceeded"
    for body in ({"model": MODEL, "prompt": 7}, {"model": MODEL, "prompt": []}):
        with pytest.raises(tokens.RequestError):
            tokens.parse_completion(body, max_model_len=100)
    for embedding_body in (
        {"model": MODEL, "input": [1, 2]},
        {"model": MODEL, "input": "x", "encoding_format": "hex"},
        {"model": MODEL, "input": "x", "dimensions": 1000},
    ):
        with pytest.raises(tokens.RequestError):
            tokens.parse_embeddings(embedding_body)
