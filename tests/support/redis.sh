# Redis for the test command (sourced by tests/run-all.sh).
#
# ensure_redis: makes sure `redis-server` is installed (the response cache's tests start
# throwaway servers of their own on free ports, to kill one mid-test), installing Debian's
# `redis-server` package when it is missing and this runs as root. Then, when
# SWITCHYARD_TEST_REDIS is set, uses it; else when a server answers on 127.0.0.1:6379, uses
# that; else starts a throwaway one on a free port (no persistence) and exports
# SWITCHYARD_TEST_REDIS. stop_throwaway_redis stops it.

REDIS_THROWAWAY_PID=""

redis_install() {
  if ((EUID != 0)) || ! command -v apt-get >/dev/null 2>&1; then
    echo "redis-server is needed by the tests: install Debian's 'redis-server' package (apt-get install redis-server, as root)" >&2
    return 1
  fi
  echo "installing Redis (Debian package redis-server; its service is kept from starting)"
  local policy=/usr/sbin/policy-rc.d created=0
  if [[ ! -e "${policy}" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"${policy}"
    chmod 0755 "${policy}"
    created=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server || rc=$?
  if ((created)); then
    rm -f "${policy}"
  fi
  return "${rc}"
}

redis_answers() {
  # PING over bash's /dev/tcp: +PONG back.
  local host="$1" port="$2" reply=""
  exec 4<>"/dev/tcp/${host}/${port}" 2>/dev/null || return 1
  printf 'PING\r\n' >&4
  read -r -t 2 reply <&4 || true
  exec 4>&-
  [[ "${reply}" == "+PONG"* ]]
}

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    redis_install || return 1
  fi
  if [[ -n "${SWITCHYARD_TEST_REDIS:-}" ]]; then
    echo "Redis for the tests: SWITCHYARD_TEST_REDIS (as set)"
    return 0
  fi
  if redis_answers 127.0.0.1 6379; then
    export SWITCHYARD_TEST_REDIS="redis://127.0.0.1:6379"
    echo "Redis for the tests: 127.0.0.1:6379"
    return 0
  fi
  local port
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
  redis-server --port "${port}" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
  REDIS_THROWAWAY_PID=$!
  local i
  for i in $(seq 1 100); do
    if redis_answers 127.0.0.1 "${port}"; then
      export SWITCHYARD_TEST_REDIS="redis://127.0.0.1:${port}"
      echo "Redis for the tests: a throwaway server on 127.0.0.1:${port}"
      return 0
    fi
    sleep 0.1
  done
  echo "the throwaway redis-server did not answer" >&2
  return 1
}

stop_throwaway_redis() {
  if [[ -n "${REDIS_THROWAWAY_PID}" ]]; then
    kill "${REDIS_THROWAWAY_PID}" 2>/dev/null || true
    wait "${REDIS_THROWAWAY_PID}" 2>/dev/null || true
    REDIS_THROWAWAY_PID=""
  fi
}
