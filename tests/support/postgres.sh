# PostgreSQL for the test command (sourced by tests/run-all.sh).
#
# ensure_postgres: when SWITCHYARD_TEST_PG is set, use it; else when a server answers on
# 127.0.0.1:5432, use that (postgres://postgres@127.0.0.1:5432/test); else start a throwaway
# cluster on a free port under target/ (installing Debian's `postgresql` package when its
# binaries are missing and this runs as root), create the database `test`, and export
# SWITCHYARD_TEST_PG for the tests. stop_throwaway_postgres stops and removes it.
# SWITCHYARD_TEST_PG_THROWAWAY=1 skips the look at 5432 (a throwaway cluster even then).

PG_THROWAWAY_DIR=""
PG_BIN=""
PG_RUN_AS=()

pg_find_bin() {
  local d
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    PG_BIN="$(dirname "$(readlink -f "$(command -v initdb)")")"
    return 0
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "${d}/initdb" && -x "${d}/pg_ctl" ]]; then
      PG_BIN="${d}"
      return 0
    fi
  done
  return 1
}

pg_install() {
  if ((EUID != 0)) || ! command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL is needed by the tests and none answers on 127.0.0.1:5432: install Debian's 'postgresql' package (apt-get install postgresql, as root), or set SWITCHYARD_TEST_PG=postgres://USER@HOST:PORT/DB" >&2
    return 1
  fi
  echo "installing PostgreSQL (Debian package postgresql; its service is kept from starting)"
  local policy=/usr/sbin/policy-rc.d created=0
  if [[ ! -e "${policy}" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"${policy}"
    chmod 0755 "${policy}"
    created=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql || rc=$?
  if ((created)); then
    rm -f "${policy}"
  fi
  return "${rc}"
}

pg_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

ensure_postgres() {
  if [[ -n "${SWITCHYARD_TEST_PG:-}" ]]; then
    echo "PostgreSQL for the tests: SWITCHYARD_TEST_PG (as set)"
    return 0
  fi
  if [[ "${SWITCHYARD_TEST_PG_THROWAWAY:-0}" != 1 ]] && (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
    # Usable as the tests expect it: user postgres without a password, a database `test`.
    local local_url=postgres://postgres@127.0.0.1:5432
    if command -v psql >/dev/null 2>&1 &&
      PGCONNECT_TIMEOUT=5 psql "${local_url}/postgres" -X -q -tAc 'SELECT 1' </dev/null >/dev/null 2>&1; then
      if ! psql "${local_url}/postgres" -X -q -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" </dev/null | grep -q 1; then
        psql "${local_url}/postgres" -X -q -c 'CREATE DATABASE test' </dev/null >/dev/null 2>&1 || true
      fi
      echo "PostgreSQL for the tests: 127.0.0.1:5432"
      return 0
    fi
    echo "a server answers on 127.0.0.1:5432 but not to user postgres without a password: starting a throwaway cluster instead"
  fi
  if ! pg_find_bin; then
    pg_install || return 1
    pg_find_bin || {
      echo "PostgreSQL was installed but initdb/pg_ctl are not found" >&2
      return 1
    }
  fi
  PG_THROWAWAY_DIR="${REPO_ROOT}/target/test-postgres"
  rm -rf "${PG_THROWAWAY_DIR}"
  mkdir -p "${PG_THROWAWAY_DIR}"
  PG_RUN_AS=()
  if ((EUID == 0)); then
    # initdb refuses to run as root: the cluster belongs to the `postgres` user.
    if ! id postgres >/dev/null 2>&1; then
      useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
    fi
    chown postgres "${PG_THROWAWAY_DIR}"
    if ! runuser -u postgres -- test -w "${PG_THROWAWAY_DIR}"; then
      # The checkout's parents are closed to other users: keep the cluster in /tmp instead.
      rm -rf "${PG_THROWAWAY_DIR}"
      PG_THROWAWAY_DIR="$(mktemp -d /tmp/switchyard-test-postgres.XXXXXX)"
      chown postgres "${PG_THROWAWAY_DIR}"
    fi
    PG_RUN_AS=(runuser -u postgres --)
  fi
  local port
  port="$(pg_free_port)"
  echo "PostgreSQL for the tests: a throwaway cluster in ${PG_THROWAWAY_DIR} on 127.0.0.1:${port}"
  "${PG_RUN_AS[@]}" "${PG_BIN}/initdb" -D "${PG_THROWAWAY_DIR}/data" -U postgres --auth=trust \
    --no-sync -E UTF8 >"${PG_THROWAWAY_DIR}/initdb.log" 2>&1 || {
    cat "${PG_THROWAWAY_DIR}/initdb.log" >&2
    return 1
  }
  "${PG_RUN_AS[@]}" "${PG_BIN}/pg_ctl" -D "${PG_THROWAWAY_DIR}/data" -w -t 60 \
    -l "${PG_THROWAWAY_DIR}/server.log" \
    -o "-p ${port} -k ${PG_THROWAWAY_DIR} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" \
    start >/dev/null || {
    cat "${PG_THROWAWAY_DIR}/server.log" >&2
    return 1
  }
  local psql="${PG_BIN}/psql"
  if [[ ! -x "${psql}" ]]; then
    psql="$(command -v psql)"
  fi
  "${PG_RUN_AS[@]}" "${psql}" -h 127.0.0.1 -p "${port}" -U postgres -d postgres -X -q \
    -c 'CREATE DATABASE test' || return 1
  export SWITCHYARD_TEST_PG="postgres://postgres@127.0.0.1:${port}/test"
  # The tests call psql by name.
  if ! command -v psql >/dev/null 2>&1; then
    export PATH="${PG_BIN}:${PATH}"
  fi
}

stop_throwaway_postgres() {
  if [[ -n "${PG_THROWAWAY_DIR}" && -d "${PG_THROWAWAY_DIR}/data" ]]; then
    "${PG_RUN_AS[@]}" "${PG_BIN}/pg_ctl" -D "${PG_THROWAWAY_DIR}/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "${PG_THROWAWAY_DIR}"
    PG_THROWAWAY_DIR=""
  fi
}
