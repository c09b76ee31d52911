"""The official `openai` Python SDK against the real switchyard binary.

The shipped proxy.toml routes the flag `support-assistant` (variations
`control` and `treatment`, split 50/50) to the built-in offline mock
provider, so these tests need no network.
"""

from __future__ import annotations

import openai
import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

FLAG = "support-assistant"
HELLO = [{"role": "user", "content": "hello"}]


def variation_for(client: openai.OpenAI, user: str) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=FLAG, user=user, messages=HELLO
    )
    raw.parse()
    variation = raw.headers.get("x-switchyard-variation")
    assert variation, f"no x-switchyard-variation header for user {user}"
    return variation


def test_chat_completion_has_the_openai_shape(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=FLAG, user="u-123", messages=HELLO
    )

    assert isinstance(completion, ChatCompletion)
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content, "empty assistant content"
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0


def test_chat_completion_carries_decision_headers(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=FLAG, user="u-123", messages=HELLO
    )
    completion = raw.parse()

    assert isinstance(completion, ChatCompletion)
    assert raw.headers.get("x-switchyard-flag") == FLAG
    assert raw.headers.get("x-switchyard-variation")
    assert raw.headers.get("x-switchyard-rule")
    assert raw.headers.get("x-request-id")


def test_same_user_gets_the_same_variation(client: openai.OpenAI) -> None:
    seen = {variation_for(client, "u-sticky-7") for _ in range(5)}
    assert len(seen) == 1, f"one user was served several variations: {seen}"


def test_users_are_spread_over_variations(client: openai.OpenAI) -> None:
    seen = {variation_for(client, f"u-{i}") for i in range(200)}
    assert len(seen) >= 2, f"200 users all got {seen}"


def stream_chunks(client: openai.OpenAI, **extra: object) -> list[ChatCompletionChunk]:
    stream = client.chat.completions.create(
        model=FLAG,
        user="u-stream",
        messages=[{"role": "user", "content": "tell me a story"}],
        stream=True,
        **extra,
    )
    assert stream.response.headers.get("x-switchyard-flag") == FLAG
    assert stream.response.headers.get("content-type", "").startswith(
        "text/event-stream"
    )
    # Iterating to the end raises on a broken stream and stops at `[DONE]`.
    with stream:
        chunks = list(stream)
    assert chunks, "the stream carried no chunks"
    for chunk in chunks:
        assert isinstance(chunk, ChatCompletionChunk)
        assert chunk.object == "chat.completion.chunk"
    return chunks


def streamed_text(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(
        choice.delta.content or "" for chunk in chunks for choice in chunk.choices
    )


def test_streaming_yields_chunks_and_ends_normally(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client)

    assert streamed_text(chunks), "no content in the streamed deltas"
    finishes = [
        c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason
    ]
    assert finishes, "no chunk carried a finish_reason"
    assert all(chunk.usage is None for chunk in chunks), (
        "usage sent without include_usage"
    )


def test_streaming_with_include_usage_ends_with_usage(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, stream_options={"include_usage": True})

    assert streamed_text(chunks)
    last = chunks[-1]
    assert last.usage is not None, "the last chunk carries no usage"
    assert last.usage.total_tokens > 0


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-flag", messages=HELLO)
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"


def test_empty_messages_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=FLAG, user="u-123", messages=[])
    assert caught.value.status_code == 400


def test_models_list_includes_the_flag(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert all(isinstance(m, Model) for m in models)
    assert FLAG in {m.id for m in models}


def test_a_16_mb_body_gives_the_sdk_a_413_with_its_body(client: openai.OpenAI) -> None:
    # The proxy answers while the body is still arriving; with `Connection: close` and a
    # lingering read the SDK gets the answer instead of a broken pipe.
    big = "x" * (16 * 1024 * 1024)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=FLAG, user="u-big", messages=[{"role": "user", "content": big}]
        )
    assert caught.value.status_code == 413
    assert caught.value.code == "body_too_large"


def test_a_16_mb_body_gives_urllib_a_413_with_its_body(proxy) -> None:
    import json
    import urllib.error
    import urllib.request

    body = b'{"model": "support-assistant", "messages": [' + b" " * (16 * 1024 * 1024) + b"]}"
    req = urllib.request.Request(
        f"{proxy.url}/v1/chat/completions",
        data=body,
        headers={"content-type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=60)
    assert caught.value.code == 413
    assert caught.value.headers.get("connection", "").lower() == "close"
    error = json.loads(caught.value.read())["error"]
    assert error["code"] == "body_too_large"
    assert error["type"] == "invalid_request_error"
