"""Client keys through the official SDKs: the OpenAI SDK sends its `api_key` as
`Authorization: Bearer`, the Anthropic SDK as `x-api-key`; with `[keys] required = true` each
raises its own exception classes for 401 (AuthenticationError), 403 (PermissionDeniedError) and
429 (RateLimitError, with `Retry-After`).

The real binary serves a copy of the shipped proxy.toml with `[keys] required = true`; the keys
are created through the admin API, as `switchyard ctl keys create` does.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from conftest import REPO_ROOT, Proxy, launch, stop

TOKEN = "keys-sdk-admin-token"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    workdir = tmp_path_factory.mktemp("switchyard-keys")
    config = workdir / "proxy.toml"
    shipped = (REPO_ROOT / "proxy.toml").read_text()
    config.write_text(shipped + "\n[keys]\nrequired = true\n")
    env = dict(os.environ, SWITCHYARD_ADMIN_TOKEN=TOKEN)
    running = launch(config, workdir, env)
    yield running
    assert stop(running) == 0, running.stderr()


def create_key(proxy: Proxy, **spec: object) -> str:
    request = urllib.request.Request(
        f"{proxy.admin_url}/admin/keys",
        data=json.dumps(spec).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 201
        key = json.load(resp)["key"]
    assert key.startswith("sk-sy-")
    return key


def gpt(proxy: Proxy, key: str) -> openai.OpenAI:
    # No retries: the SDK would otherwise wait out Retry-After and try again.
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


def claude(proxy: Proxy, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=key, max_retries=0)


def test_openai_sdk_raises_its_own_classes(keyed: Proxy) -> None:
    key = create_key(
        keyed, name="sdk-openai", flags=["support-assistant"], rpm=2, attributes={"plan": "pro"}
    )
    client = gpt(keyed, key)
    answer = client.chat.completions.create(model="support-assistant", messages=HELLO)
    assert answer.choices[0].message.content

    with pytest.raises(openai.AuthenticationError) as caught:
        gpt(keyed, "sk-not-a-switchyard-key").chat.completions.create(
            model="support-assistant", messages=HELLO
        )
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"

    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="summarizer", messages=HELLO)
    assert caught.value.status_code == 403

    client.chat.completions.create(model="support-assistant", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="support-assistant", messages=HELLO)
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert key not in caught.value.message


def test_anthropic_sdk_raises_its_own_classes(keyed: Proxy) -> None:
    key = create_key(keyed, name="sdk-anthropic", flags=["support-assistant"], rpm=2)
    client = claude(keyed, key)
    answer = client.messages.create(
        model="support-assistant", max_tokens=50, messages=HELLO
    )
    assert answer.content

    with pytest.raises(anthropic.AuthenticationError) as caught:
        claude(keyed, "sk-sy-0000").messages.create(
            model="support-assistant", max_tokens=50, messages=HELLO
        )
    assert caught.value.status_code == 401

    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        client.messages.create(model="summarizer", max_tokens=50, messages=HELLO)
    assert caught.value.status_code == 403

    client.messages.create(model="support-assistant", max_tokens=50, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="support-assistant", max_tokens=50, messages=HELLO)
    assert caught.value.status_code == 429
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_the_budget_is_a_rate_limit_error_too(keyed: Proxy) -> None:
    key = create_key(keyed, name="sdk-budget", budget_usd="0.000000001/day")
    client = gpt(keyed, key)
    # The first answer spends more than a billionth of a dollar.
    client.chat.completions.create(model="summarizer", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="summarizer", messages=HELLO)
    assert caught.value.code == "budget_exceeded"
