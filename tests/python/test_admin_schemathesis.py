"""Schemathesis against the admin API's own OpenAPI document (`/admin/openapi.json`).

The real binary serves a copy of the shipped proxy.toml with an admin token; schemathesis
generates requests for every documented operation (examples, coverage, fuzzing and stateful
phases) and runs every check: no 5xx, status codes, content types, headers and bodies as
documented, valid input accepted, invalid input rejected, authentication enforced.

It runs as its own step of tests/run-all.sh (`schemathesis`), which sets
SWITCHYARD_SCHEMATHESIS=1; without it the test is skipped, so the SDK step does not run it
twice. `tests/python/schemathesis.toml` holds the one deliberate setting (the rollout stage range
depends on the flag; see the comment there). SCHEMATHESIS_SEED and SCHEMATHESIS_MAX_EXAMPLES
change the run's seed and size.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CONFIG = HERE / "schemathesis.toml"
TOKEN = "schemathesis-admin-token"
STARTUP_DEADLINE_S = 30.0
RUN_DEADLINE_S = 600.0
ADMIN_PREFIX = "switchyard admin listening on "

pytestmark = pytest.mark.skipif(
    os.environ.get("SWITCHYARD_SCHEMATHESIS") != "1",
    reason="run by the schemathesis step of tests/run-all.sh (set SWITCHYARD_SCHEMATHESIS=1)",
)


def _binary() -> Path:
    binary = Path(os.environ.get("SWITCHYARD_BIN", "target/debug/switchyard"))
    if not binary.is_absolute():
        binary = REPO_ROOT / binary
    if not binary.is_file():
        pytest.fail(f"switchyard binary not found at {binary}; build it or set SWITCHYARD_BIN")
    return binary


def _lines(stream, out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line.rstrip("\r\n"))
    out.put(None)


@pytest.fixture(scope="module")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A proxy of its own (the fuzzer flips kill switches and rollouts)."""
    workdir = tmp_path_factory.mktemp("schemathesis-proxy")
    shutil.copy(REPO_ROOT / "proxy.toml", workdir / "proxy.toml")
    env = dict(os.environ, SWITCHYARD_ADMIN_TOKEN=TOKEN)
    stderr_path = workdir / "stderr.log"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [
                str(_binary()),
                "serve",
                "--config",
                "proxy.toml",
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
    threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
    url = None
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while url is None:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            line = None
        if line is None:
            process.kill()
            process.wait()
            pytest.fail(
                "switchyard did not announce its admin listener:\n"
                + stderr_path.read_text(errors="replace")
            )
        if line.startswith(ADMIN_PREFIX):
            url = line[len(ADMIN_PREFIX) :]
    try:
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_admin_api_conforms_to_its_openapi_document(admin_url: str, tmp_path: Path) -> None:
    seed = os.environ.get("SCHEMATHESIS_SEED", "20261125")
    max_examples = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "30")
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--no-color",
        "--config-file",
        str(CONFIG),
        "run",
        f"{admin_url}/admin/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--max-examples",
        max_examples,
        "--seed",
        seed,
        "--workers",
        "1",
        "--request-timeout",
        "10",
    ]
    # The working directory takes hypothesis' example database.
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE_S,
        env=dict(os.environ, NO_COLOR="1"),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"schemathesis found mismatches (exit {result.returncode}, seed {seed}):\n"
        + output[-20000:]
    )
    # Every operation of the document was run (none silently skipped).
    with urllib.request.urlopen(f"{admin_url}/admin/openapi.json", timeout=10) as resp:
        document = json.load(resp)
    methods = {"get", "put", "post", "delete", "patch"}
    operations = sum(len(methods & set(item)) for item in document["paths"].values())
    assert "Operations:" in output and f"{operations} selected" in output, output[-4000:]
