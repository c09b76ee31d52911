"""Fixtures: the real switchyard binary, started once per test session."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE_S = 30.0
SHUTDOWN_DEADLINE_S = 45.0
CLIENT_API_KEY = "sk-client-key-not-forwarded"

LISTEN_RE = re.compile(r"^switchyard listening on (http://\S+)$")
ADMIN_LISTEN_RE = re.compile(r"^switchyard admin listening on (http://\S+)$")


@dataclass
class Proxy:
    url: str
    admin_url: str
    process: subprocess.Popen[str]
    workdir: Path

    def stderr(self) -> str:
        path = self.workdir / "stderr.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _binary() -> Path:
    binary = Path(os.environ.get("SWITCHYARD_BIN", "target/debug/switchyard"))
    if not binary.is_absolute():
        binary = REPO_ROOT / binary
    if not binary.is_file():
        pytest.fail(
            f"switchyard binary not found at {binary}; build it or set SWITCHYARD_BIN"
        )
    return binary


def _drain(stream, lines: queue.Queue[str | None]) -> None:
    """Forward stdout lines to the queue; keep reading so the pipe never fills."""
    for line in stream:
        lines.put(line.rstrip("\r\n"))
    lines.put(None)


def _stop(process: subprocess.Popen[str]) -> int:
    """SIGTERM, wait, then SIGKILL; returns the exit code after SIGTERM (or -9)."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=SHUTDOWN_DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -signal.SIGKILL


@pytest.fixture(scope="session")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    workdir = tmp_path_factory.mktemp("switchyard")
    env = dict(os.environ)
    env.setdefault("SWITCHYARD_ADMIN_TOKEN", "test-admin-token")
    running = launch(REPO_ROOT / "proxy.toml", workdir, env)
    yield running

    code = _stop(running.process)
    assert code == 0, (
        f"switchyard exited with {code} after SIGTERM (expected 0).\nstderr:\n{running.stderr()}"
    )


def stop(running: Proxy) -> int:
    """SIGTERM, wait, then SIGKILL; the exit code."""
    return _stop(running.process)


def launch(config: Path, workdir: Path, env: dict[str, str]) -> Proxy:
    """Starts the binary on `config` (ports 0) and waits until both listeners are announced."""
    binary = _binary()
    with open(workdir / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--config",
                str(config),
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            bufsize=1,
        )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_drain, args=(process.stdout, lines), daemon=True).start()

    url = admin_url = None
    seen: list[str] = []
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while url is None or admin_url is None:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(remaining, 0.0)) if remaining > 0 else None
        except queue.Empty:
            line = None
        if line is None:
            exited = process.poll() is not None
            code = _stop(process)
            stderr_text = (workdir / "stderr.log").read_text(errors="replace")
            why = (
                f"exited with code {code} before announcing both listeners"
                if exited
                else f"did not announce both listeners within {STARTUP_DEADLINE_S:.0f}s"
            )
            pytest.fail(
                f"switchyard {why}.\nstdout:\n"
                + "\n".join(seen)
                + "\nstderr:\n"
                + stderr_text
            )
        seen.append(line)
        if m := LISTEN_RE.match(line):
            url = m.group(1)
        elif m := ADMIN_LISTEN_RE.match(line):
            admin_url = m.group(1)

    return Proxy(url=url, admin_url=admin_url, process=process, workdir=workdir)


@pytest.fixture(scope="session")
def client(proxy: Proxy) -> Iterator[openai.OpenAI]:
    # No retries: a retried 5xx would hide a proxy bug from these tests.
    c = openai.OpenAI(
        base_url=f"{proxy.url}/v1",
        api_key=CLIENT_API_KEY,
        max_retries=0,
        timeout=30.0,
    )
    yield c
    # Close pooled keep-alive connections before the proxy is stopped.
    c.close()
