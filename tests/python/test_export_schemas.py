"""Every exported record kind validated against its JSON Schema in docs/schemas/, against the
real binary: exposures, feedback events, eval scores and per-request records (from the
continuous sink's files), fetched page by page through GET /admin/export."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any

import jsonschema
import pytest

from conftest import REPO_ROOT, launch, stop

ADMIN = "export-schema-admin-token"

CONFIG = """
[admin]
tokens = [{{ name = "ops", token_env = "EXPORT_TEST_ADMIN" }}]

[state]
url = "sqlite:{state}"

[export]
dir = "{export}"
rotate_bytes = 4096

[providers.mock]
kind = "mock"
latency = "0ms"

[prices.small-1]
input_per_million = 0.5
output_per_million = 1.5

[flags.assistant]
off_variation = "control"

[flags.assistant.variations.control]
provider = "mock"
model_id = "small-1"
cache = {{ ttl = "1m", any_temperature = true }}

[flags.assistant.variations.treatment]
provider = "mock"
model_id = "large-2"
fallback_behavior = "rule-based"

[[flags.assistant.rules]]
id = "ab"
allocation = [{{ variation = "control", end = 5000 }}, {{ variation = "treatment", end = 10000 }}]
"""

SCHEMAS = REPO_ROOT / "docs" / "schemas"


def _get(url: str, token: str | None = ADMIN) -> tuple[int, Any, bytes]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.headers, resp.read()


def _post(url: str, body: dict) -> tuple[int, Any, bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.headers, resp.read()


def _export(admin_url: str, kind: str, limit: int = 3) -> list[dict]:
    records: list[dict] = []
    cursor = None
    while True:
        url = f"{admin_url}/admin/export?kind={kind}&limit={limit}"
        if cursor:
            url += f"&cursor={cursor}"
        status, headers, body = _get(url)
        assert status == 200
        assert headers.get("content-type") == "application/x-ndjson"
        lines = [json.loads(line) for line in body.decode().splitlines()]
        records.extend(lines)
        cursor = headers.get("x-switchyard-next-cursor")
        if len(lines) < limit:
            return records


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("export")
    config = workdir / "proxy.toml"
    config.write_text(
        CONFIG.format(state=workdir / "state.db", export=workdir / "records")
    )
    env = dict(os.environ)
    env["EXPORT_TEST_ADMIN"] = ADMIN
    proxy = launch(config, workdir, env)
    yield proxy
    assert stop(proxy) == 0, proxy.stderr()


def test_every_exported_record_matches_its_schema(running) -> None:
    events = []
    for i in range(12):
        body = {
            "model": "assistant",
            "user": f"schema-user-{i}",
            "messages": [{"role": "user", "content": "hello"}],
            "stream": i % 2 == 0,
        }
        if i % 2 == 0:
            body["stream_options"] = {"include_usage": True}
        status, headers, _ = _post(f"{running.url}/v1/chat/completions", body)
        assert status == 200
        request_id = headers.get("x-request-id")
        events.append({"event_id": f"thumb-{i}", "metric": "thumbs", "value": 1, "request_id": request_id})
        events.append({"event_id": f"eval:judge:{i}", "metric": "hallucination", "value": 0.5, "request_id": request_id})
    status, _, body = _post(f"{running.url}/v1/feedback", {"events": events})
    assert json.loads(body)["accepted"] == len(events)

    deadline = time.monotonic() + 15
    while True:
        exposures = _export(running.admin_url, "exposures")
        requests_ = _export(running.admin_url, "requests")
        if len(exposures) == 12 and len(requests_) == 12:
            break
        assert time.monotonic() < deadline, (len(exposures), len(requests_))
        time.sleep(0.05)
    feedback = _export(running.admin_url, "feedback")
    evals = _export(running.admin_url, "evals")
    assert len(feedback) == 24 and len(evals) == 12

    for kind, records, schema_file in [
        ("exposures", exposures, "exposure.json"),
        ("feedback", feedback, "feedback.json"),
        ("evals", evals, "eval.json"),
        ("requests", requests_, "request.json"),
    ]:
        schema = json.loads((SCHEMAS / schema_file).read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        validator = jsonschema.Draft202012Validator(schema)
        for record in records:
            errors = [e.message for e in validator.iter_errors(record)]
            assert not errors, f"{kind}: {record}: {errors}"
    # Streams report their time to first token; priced models their cost.
    assert any(r["ttft_seconds"] is not None for r in requests_)
    assert any(r["cost_usd"] is not None for r in requests_ if r["model"] == "small-1")


def test_export_needs_the_admin_token(running) -> None:
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(f"{running.admin_url}/admin/export?kind=exposures", token=None)
    assert e.value.code == 401
