"""The agent interface through the official MCP Python SDK (streamable HTTP client) against the
real binary: it connects with an agent token, lists the tools, reads results, advances a rollout
within its policy, is refused outside it (the kill switch; a second stage change within the
hour), and the audit log shows every call as agent:<name> with its reason."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import httpx2
import pytest
import requests
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import Proxy, launch, stop

ADMIN = "mcp-test-admin-token"
AGENT = "mcp-test-agent-token"

CONFIG = """
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
reload_check_interval = "0s"

[admin]
tokens = [{ name = "ops", token_env = "MCP_TEST_ADMIN" },
          { name = "loop-agent", token_env = "MCP_TEST_AGENT", policy = { allow = ["read", "rollout.advance"], max_stage_changes_per_hour = 1, kill_switch = false } }]

[state]
url = "sqlite::memory:"

[providers.mock]
kind = "mock"
latency = "0ms"

[flags.assistant]
off_variation = "current"
stable_variation = "current"

[flags.assistant.variations.current]
provider = "mock"
model_id = "model-current"

[flags.assistant.variations.next]
provider = "mock"
model_id = "model-next"

[[flags.assistant.rules]]
id = "ramp"
rollout = { variation = "next", stages = [10, 50, 100], initial_stage = 0, auto_advance = false, gate = { min_requests = 0, hold = "0s" } }

[[flags.assistant.rules]]
id = "everyone-else"
allocation = [{ variation = "current", end = 10000 }]
"""


@pytest.fixture(scope="module")
def mcp_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    workdir = tmp_path_factory.mktemp("mcp")
    config = workdir / "proxy.toml"
    config.write_text(CONFIG)
    env = dict(os.environ, MCP_TEST_ADMIN=ADMIN, MCP_TEST_AGENT=AGENT)
    running = launch(config, workdir, env)
    yield running
    assert stop(running) == 0, running.stderr()


def structured(result) -> dict:
    """A tool result's JSON (the structured content, which the text repeats)."""
    text = result.content[0].text
    assert json.loads(text) == result.structured_content
    return result.structured_content


async def agent_session(proxy: Proxy, token: str) -> list[tuple[str, object]]:
    """Runs the agent's calls; returns (step, outcome) pairs for the assertions."""
    seen: list[tuple[str, object]] = []
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
    async with http:
        async with streamable_http_client(f"{proxy.admin_url}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                seen.append(("server", init.server_info.name))
                tools = await session.list_tools()
                seen.append(("tools", sorted(t.name for t in tools.tools)))
                seen.append(("schema", tools.tools[0].input_schema))

                r = await session.call_tool("flag.results", {"flag": "assistant", "reason": "weekly check"})
                seen.append(("results", (r.is_error, structured(r))))

                r = await session.call_tool("rollout.advance", {"flag": "assistant", "reason": "gate is met"})
                seen.append(("advance", (r.is_error, structured(r))))

                r = await session.call_tool("rollout.advance", {"flag": "assistant", "reason": "still fine"})
                seen.append(("advance again", (r.is_error, structured(r))))

                r = await session.call_tool("kill_switch", {"flag": "assistant", "enabled": False, "reason": "errors look high"})
                seen.append(("kill", (r.is_error, structured(r))))

                r = await session.call_tool("rollout.rollback", {"flag": "assistant", "reason": "undo"})
                seen.append(("rollback", (r.is_error, structured(r))))
    return seen


def test_an_agent_acts_within_its_policy_and_everything_is_audited(mcp_proxy: Proxy) -> None:
    steps = dict(asyncio.run(agent_session(mcp_proxy, AGENT)))

    assert steps["server"] == "switchyard"
    for name in ["flags.list", "flag.get", "flag.results", "alerts.list", "rollout.get", "audit.list",
                 "rollout.advance", "rollout.rollback", "rollout.hold", "fallback.force", "kill_switch"]:
        assert name in steps["tools"], steps["tools"]
    assert "reason" in steps["schema"]["required"]

    is_error, results = steps["results"]
    assert not is_error
    assert results["flag"] == "assistant" and "srm" in results and "variations" in results

    is_error, advanced = steps["advance"]
    assert not is_error, advanced
    assert advanced["rollout"]["stage"] == 1
    assert advanced["audit"]["actor"] == "agent:loop-agent"

    is_error, refused = steps["advance again"]
    assert is_error and refused["refused"], refused
    assert "1 rollout stage change(s) per hour" in refused["reason"]

    is_error, refused = steps["kill"]
    assert is_error and "forbids the kill switch" in refused["reason"], refused

    is_error, refused = steps["rollback"]
    assert is_error and "does not allow `rollout.rollback`" in refused["reason"], refused

    # Nothing outside the policy happened: the flag is on, the rollout at stage 1.
    admin = {"Authorization": f"Bearer {ADMIN}"}
    flag = requests.get(f"{mcp_proxy.admin_url}/admin/flags/assistant", headers=admin, timeout=10).json()
    assert flag["enabled"] is True
    assert flag["rollouts"][0]["stage"] == 1

    audit = requests.get(
        f"{mcp_proxy.admin_url}/admin/audit",
        params={"actor": "agent:loop-agent", "limit": 100},
        headers=admin,
        timeout=10,
    ).json()["entries"]
    trail = [(e["action"], e["reason"]) for e in reversed(audit)]
    assert trail == [
        ("agent_read", "weekly check"),
        ("set_rollout_stage", "gate is met"),
        ("agent_refused", "still fine"),
        ("agent_refused", "errors look high"),
        ("agent_refused", "undo"),
    ], trail
    refused_kill = [e for e in audit if e["reason"] == "errors look high"][0]
    assert refused_kill["after"]["tool"] == "kill_switch"
    assert "forbids the kill switch" in refused_kill["after"]["why"]
    # The agent's token never leaks into the log.
    assert AGENT not in json.dumps(audit) and AGENT not in mcp_proxy.stderr()


def test_the_agent_token_is_not_an_admin_token(mcp_proxy: Proxy) -> None:
    r = requests.get(
        f"{mcp_proxy.admin_url}/admin/flags",
        headers={"Authorization": f"Bearer {AGENT}"},
        timeout=10,
    )
    assert r.status_code == 403
    assert "only on /mcp" in r.json()["error"]["message"]
    r = requests.post(f"{mcp_proxy.admin_url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10)
    assert r.status_code == 401
