"""The official SDKs on every client API: OpenAI Responses and embeddings, the OpenAI Agents
SDK running a turn with a function tool, and the Anthropic SDK (create, stream,
count_tokens, errors) — against the real switchyard binary.

The shipped proxy.toml serves `support-assistant` and `kb-embeddings` from the built-in
offline mock provider; the agent test starts its own proxy in front of a scripted
chat-completions upstream, so the Responses calls of the agent are translated through chat.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import openai
import pytest
from openai.types.responses import Response

import os

from conftest import Proxy, launch, stop

FLAG = "support-assistant"


def test_responses_create_is_decided_like_chat(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model=FLAG, input="Where is my order?", user="u-responses-1"
    )
    response = raw.parse()
    assert isinstance(response, Response)
    assert response.status == "completed"
    assert "Where is my order?" in response.output_text
    assert response.usage is not None and response.usage.input_tokens > 0
    chat = client.chat.completions.with_raw_response.create(
        model=FLAG, user="u-responses-1", messages=[{"role": "user", "content": "hi"}]
    )
    chat.parse()
    assert raw.headers["x-switchyard-variation"] == chat.headers["x-switchyard-variation"]
    # The variation's system prompt arrives as the model's instructions.
    assert "support assistant" in response.output_text


def test_responses_stream_yields_responses_events(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=FLAG, input="stream this", user="u-responses-2", stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == deltas
    assert final.usage is not None and final.usage.output_tokens > 0


def test_embeddings_create(client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(
        model="kb-embeddings", input=["refund policy", "shipping times"], user="u-kb"
    )
    result = raw.parse()
    assert len(result.data) == 2
    assert all(len(d.embedding) == 8 for d in result.data)
    assert raw.headers["x-switchyard-variation"] in {"small", "large"}
    assert result.usage.prompt_tokens > 0


def test_openai_errors_map_to_sdk_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-flag", input="x")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=FLAG, input="x", max_output_tokens=-5)
    assert "max_output_tokens" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="kb-embeddings", input=[])


@pytest.fixture(scope="module")
def claude(proxy: Proxy) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-client", max_retries=0)
    yield c
    c.close()


def test_anthropic_messages_create(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=FLAG,
        max_tokens=200,
        metadata={"user_id": "u-claude-1"},
        messages=[{"role": "user", "content": "Where is my parcel?"}],
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert "Where is my parcel?" in message.content[0].text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_anthropic_messages_stream(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=FLAG,
        max_tokens=200,
        metadata={"user_id": "u-claude-2"},
        messages=[{"role": "user", "content": "stream to me"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "stream to me" in text
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_anthropic_count_tokens_and_errors(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(
        model=FLAG, messages=[{"role": "user", "content": "how many tokens is this?"}]
    )
    assert counted.input_tokens > 0
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(
            model="no-such-flag", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=FLAG, max_tokens=10, messages=[])


class _ScriptedChat(BaseHTTPRequestHandler):
    """A chat-completions upstream that asks for a tool first, then answers with its result."""

    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).seen.append(body)
        tool_results = [m for m in body["messages"] if m.get("role") == "tool"]
        if tool_results:
            message = {"role": "assistant", "content": f"The weather: {tool_results[-1]['content']}"}
            finish = "stop"
        else:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            }
            finish = "tool_calls"
        answer = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


AGENT_CONFIG = """
[providers.scripted]
kind = "openai"
base_url = "{base}"
apis = ["chat"]
timeout = "20s"

[prompts]
agent-a = "You are agent configuration A."
agent-b = "You are agent configuration B."

[flags.agent]
off_variation = "a"
[flags.agent.variations.a]
provider = "scripted"
model_id = "model-a"
system_prompt_variant = "agent-a"
[flags.agent.variations.b]
provider = "scripted"
model_id = "model-b"
system_prompt_variant = "agent-b"
[[flags.agent.rules]]
id = "split"
allocation = [{{ variation = "a", end = 5000 }}, {{ variation = "b", end = 10000 }}]
"""


@pytest.fixture()
def agent_proxy(tmp_path: Path) -> Iterator[Proxy]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _ScriptedChat.seen = []
    config = tmp_path / "agent.toml"
    config.write_text(AGENT_CONFIG.format(base=f"http://127.0.0.1:{server.server_port}/v1"))
    running = launch(config, tmp_path, dict(os.environ))
    yield running
    assert stop(running) == 0, running.stderr()
    server.shutdown()


def test_an_agents_sdk_turn_with_a_function_tool_stays_on_one_variation(
    agent_proxy: Proxy,
) -> None:
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    sdk = openai.AsyncOpenAI(
        base_url=f"{agent_proxy.url}/v1",
        api_key="sk-client",
        default_headers={"x-switchyard-user": "agent-user-7"},
        max_retries=0,
    )
    agent = Agent(
        name="support",
        instructions="Help with the weather.",
        model=OpenAIResponsesModel(model="agent", openai_client=sdk),
        tools=[get_weather],
    )
    result = Runner.run_sync(agent, "What's the weather in Paris?")
    assert calls == ["Paris"]
    assert "sunny in Paris" in result.final_output
    seen = _ScriptedChat.seen
    assert len(seen) == 2
    # Both model calls of the turn landed on the same variation.
    assert seen[0]["model"] == seen[1]["model"]
    prompts = {s["messages"][0]["content"] for s in seen}
    assert len(prompts) == 1 and prompts.pop().startswith("You are agent configuration")
    assert seen[0]["tools"][0]["function"]["name"] == "get_weather"
    assert seen[1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "sunny in Paris",
    }
