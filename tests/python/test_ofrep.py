"""OFREP through the official OpenFeature Python SDK and its OFREP provider, against the real
binary: object, string and boolean evaluations, a killed flag, an unknown flag, a missing
targeting key, keys, ETag/304 on bulk, and the same variation a chat request gets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from conftest import Proxy, launch, stop

ADMIN = "ofrep-admin-token"
KEY = "ofrep-client-key"

CONFIG = """
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
reload_check_interval = "0s"

[admin]
tokens = [{ name = "ops", token_env = "OFREP_TEST_ADMIN" }]

[ofrep]
tokens = [{ name = "app", token_env = "OFREP_TEST_KEY" }]

[state]
url = "sqlite::memory:"

[providers.mock]
kind = "mock"
latency = "0ms"

[prompts]
short = "Answer briefly."

[flags.assistant]
off_variation = "control"

[flags.assistant.variations.control]
provider = "mock"
model_id = "small-1"
retrieval_profile = "keyword-v1"
variables = { show_sources = false, greeting = "Hi" }

[flags.assistant.variations.treatment]
provider = "mock"
model_id = "large-2"
system_prompt_variant = "short"
temperature = 0.4
token_budget = 900
retrieval_profile = "semantic-v2"
variables = { show_sources = true, greeting = "Hello" }

[[flags.assistant.rules]]
id = "ab"
allocation = [{ variation = "control", end = 5000 }, { variation = "treatment", end = 10000 }]

[flags.single]
off_variation = "only"

[flags.single.variations.only]
provider = "mock"
model_id = "only-1"

[[flags.single.rules]]
id = "all"
allocation = [{ variation = "only", end = 10000 }]
"""


@pytest.fixture(scope="module")
def ofrep_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    workdir = tmp_path_factory.mktemp("ofrep")
    config = workdir / "proxy.toml"
    config.write_text(CONFIG)
    env = dict(os.environ, OFREP_TEST_ADMIN=ADMIN, OFREP_TEST_KEY=KEY)
    running = launch(config, workdir, env)
    yield running
    assert stop(running) == 0, running.stderr()


@pytest.fixture(scope="module")
def client(ofrep_proxy: Proxy) -> OpenFeatureClient:
    provider = OFREPProvider(
        ofrep_proxy.url, headers_factory=lambda: {"Authorization": f"Bearer {KEY}"}
    )
    api.set_provider(provider, domain="switchyard")
    return api.get_client(domain="switchyard")


def chat_variation(proxy: Proxy, flag: str, user: str) -> str:
    r = requests.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": flag, "user": user, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.headers["x-switchyard-variation"]


def test_object_evaluation_is_the_whole_configuration(client: OpenFeatureClient, ofrep_proxy: Proxy) -> None:
    seen = set()
    for i in range(40):
        user = f"user-{i}"
        d = client.get_object_details("assistant", {}, EvaluationContext(targeting_key=user))
        assert d.error_code is None, d.error_message
        assert d.reason == Reason.SPLIT
        assert d.variant in ("control", "treatment")
        assert d.flag_metadata["rule"] == "ab"
        assert 0 <= d.flag_metadata["bucket"] < 10000
        if d.variant == "treatment":
            assert d.value["model_id"] == "large-2"
            assert d.value["system_prompt_variant"] == "short"
            assert d.value["temperature"] == 0.4
            assert d.value["token_budget"] == 900
            assert d.value["show_sources"] is True
        else:
            assert d.value["model_id"] == "small-1"
            assert d.value["show_sources"] is False
        assert d.value["provider"] == "mock"
        # The same user's chat request gets the same variation.
        assert chat_variation(ofrep_proxy, "assistant", user) == d.variant
        seen.add(d.variant)
    assert seen == {"control", "treatment"}


def test_string_and_boolean_variables(client: OpenFeatureClient) -> None:
    for i in range(20):
        ctx = EvaluationContext(targeting_key=f"typed-{i}", attributes={"plan": "pro"})
        whole = client.get_object_value("assistant", {}, ctx)
        profile = client.get_string_details("assistant.retrieval_profile", "none", ctx)
        assert profile.error_code is None
        assert profile.value == whole["retrieval_profile"]
        show = client.get_boolean_details("assistant.show_sources", False, ctx)
        assert show.error_code is None
        assert show.value is whole["show_sources"]
        assert profile.variant == show.variant
    # A variable without a value (no prompt on control) falls back to the code default.
    for i in range(50):
        ctx = EvaluationContext(targeting_key=f"prompt-{i}")
        if client.get_object_details("assistant", {}, ctx).variant == "control":
            d = client.get_string_details("assistant.system_prompt_variant", "code-default", ctx)
            assert d.value == "code-default" and d.error_code is None
            break
    else:
        pytest.fail("no user got control")


def test_static_unknown_and_missing_targeting_key(client: OpenFeatureClient) -> None:
    d = client.get_object_details("single", {}, EvaluationContext(targeting_key="u"))
    assert d.reason == Reason.STATIC and d.variant == "only"
    d = client.get_object_details("no-such-flag", {"fallback": 1}, EvaluationContext(targeting_key="u"))
    assert d.error_code == ErrorCode.FLAG_NOT_FOUND
    assert d.value == {"fallback": 1}
    d = client.get_string_details("assistant.no_such_variable", "dflt", EvaluationContext(targeting_key="u"))
    assert d.error_code == ErrorCode.FLAG_NOT_FOUND and d.value == "dflt"
    d = client.get_object_details("assistant", {"x": 1}, EvaluationContext(attributes={"plan": "pro"}))
    assert d.error_code == ErrorCode.TARGETING_KEY_MISSING
    assert d.value == {"x": 1}
    # A string read of an object flag is a type mismatch, answered with the default.
    d = client.get_string_details("assistant", "dflt", EvaluationContext(targeting_key="u"))
    assert d.error_code == ErrorCode.TYPE_MISMATCH and d.value == "dflt"


def test_keys_and_protocol_errors(ofrep_proxy: Proxy) -> None:
    url = f"{ofrep_proxy.url}/ofrep/v1/evaluate/flags/assistant"
    body = {"context": {"targetingKey": "u"}}
    assert requests.post(url, json=body, timeout=10).status_code == 401
    r = requests.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert r.status_code == 403
    r = requests.post(url, json=body, headers={"X-API-Key": KEY}, timeout=10)
    assert r.status_code == 200 and r.json()["key"] == "assistant"
    auth = {"Authorization": f"Bearer {KEY}"}
    r = requests.post(url, data=b"{not json", headers=auth, timeout=10)
    assert r.status_code == 400 and r.json()["errorCode"] == "PARSE_ERROR"
    r = requests.post(url, json={"context": "x"}, headers=auth, timeout=10)
    assert r.status_code == 400 and r.json()["errorCode"] == "INVALID_CONTEXT"
    r = requests.post(url, json={"context": {"targetingKey": 7}}, headers=auth, timeout=10)
    assert r.status_code == 400 and r.json()["errorCode"] == "INVALID_CONTEXT"
    r = requests.post(url, json={"context": {}}, headers=auth, timeout=10)
    assert r.status_code == 400 and r.json()["errorCode"] == "TARGETING_KEY_MISSING"
    r = requests.post(f"{ofrep_proxy.url}/ofrep/v1/evaluate/flags/nope", json=body, headers=auth, timeout=10)
    assert r.status_code == 404 and r.json() == {
        "key": "nope",
        "errorCode": "FLAG_NOT_FOUND",
        "errorDetails": 'flag "nope" was not found',
    }


def test_killed_flag_and_bulk_etag(client: OpenFeatureClient, ofrep_proxy: Proxy) -> None:
    bulk = f"{ofrep_proxy.url}/ofrep/v1/evaluate/flags"
    auth = {"Authorization": f"Bearer {KEY}"}
    ctx = {"context": {"targetingKey": "etag-user", "plan": "pro"}}
    first = requests.post(bulk, json=ctx, headers=auth, timeout=10)
    assert first.status_code == 200
    etag = first.headers["ETag"]
    keys = {f["key"] for f in first.json()["flags"]}
    assert {"assistant", "single", "assistant.retrieval_profile", "assistant.show_sources"} <= keys
    again = requests.post(bulk, json=ctx, headers={**auth, "If-None-Match": etag}, timeout=10)
    assert again.status_code == 304 and again.content == b""
    assert again.headers["ETag"] == etag
    other = requests.post(
        bulk, json={"context": {"targetingKey": "someone-else"}}, headers={**auth, "If-None-Match": etag}, timeout=10
    )
    assert other.status_code == 200 and other.headers["ETag"] != etag

    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = requests.put(
        f"{ofrep_proxy.admin_url}/admin/flags/assistant/enabled",
        json={"enabled": False, "reason": "ofrep test"},
        headers=admin,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    try:
        d = client.get_object_details("assistant", {}, EvaluationContext(targeting_key="etag-user"))
        assert d.reason == Reason.DISABLED and d.variant == "control"
        assert chat_variation(ofrep_proxy, "assistant", "etag-user") == "control"
        changed = requests.post(bulk, json=ctx, headers={**auth, "If-None-Match": etag}, timeout=10)
        assert changed.status_code == 200 and changed.headers["ETag"] != etag
        killed = next(f for f in changed.json()["flags"] if f["key"] == "assistant")
        assert killed["reason"] == "DISABLED"
    finally:
        requests.put(
            f"{ofrep_proxy.admin_url}/admin/flags/assistant/enabled",
            json={"enabled": True},
            headers=admin,
            timeout=10,
        )
