#!/usr/bin/env bash
# User-space instructions per request (callgrind), Switchyard against the bare hyper relay:
# the steady measure on a shared machine, where clocks move with whatever else runs. Run by
# `CALLGRIND=1 bash benches/load.sh`, which passes LOADGEN, SWITCHYARD, CONFIG (its generated
# config) and UP_ADDR (its fake provider). Each target runs under valgrind; after a 3 s
# warm-up its counters are zeroed, 4 connections send for CG_DURATION seconds (default 10),
# and the dumped total is divided by the requests answered. Switchyard is measured with a new
# user per request and with returning users (RETURNING, default 1000).
set -euo pipefail

: "${LOADGEN:?}" "${SWITCHYARD:?}" "${CONFIG:?}" "${UP_ADDR:?}"
CG_DURATION="${CG_DURATION:-10}"
RETURNING="${RETURNING:-1000}"
command -v valgrind >/dev/null 2>&1 && command -v callgrind_control >/dev/null 2>&1 ||
  { echo "callgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }

WORK="$(mktemp -d -t switchyard-callgrind.XXXXXX)"
PID=""
cleanup() {
  [[ -n "${PID}" ]] && kill "${PID}" 2>/dev/null || true
  rm -rf "${WORK}"
}
trap cleanup EXIT

field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }

# instructions URL [USERS]: zeroes PID's counters, runs the load, dumps; prints "Ir requests".
instructions() {
  local url="$1" users="${2:-0}" res before
  callgrind_control -z "${PID}" >/dev/null
  res="$("${LOADGEN}" closed --url "${url}" --conns 4 --warmup 0 --duration "${CG_DURATION}" --users "${users}" | grep '^result ')"
  before="$(ls "${WORK}" | wc -l)"
  callgrind_control -d "${PID}" >/dev/null
  for _ in $(seq 1 100); do
    (($(ls "${WORK}" | wc -l) > before)) && break
    sleep 0.1
  done
  local file
  file="$(ls -t "${WORK}"/cg.out.* | head -1)"
  printf '%s %s\n' "$(awk '/^(summary|totals):/ { print $2; exit }' "${file}")" "$(field "${res}" ok)"
}

# start NAME COMMAND…: the command under callgrind, listening on PORT; waits for an answer.
start() {
  valgrind --tool=callgrind --callgrind-out-file="${WORK}/cg.out.%p" "$@" \
    >"${WORK}/target.out" 2>"${WORK}/target.err" &
  PID=$!
  "${LOADGEN}" first --url "http://127.0.0.1:${PORT}/v1/chat/completions" --since-ns 0 --deadline 120 >/dev/null ||
    { tail -5 "${WORK}/target.err" >&2; exit 1; }
  "${LOADGEN}" closed --url "http://127.0.0.1:${PORT}/v1/chat/completions" --conns 4 --warmup 0 --duration 3 >/dev/null
}

stop() {
  kill "${PID}" 2>/dev/null || true
  wait "${PID}" 2>/dev/null || true
  PID=""
}

PORT="$("${LOADGEN}" freeport)"
start "${LOADGEN}" relay --upstream "${UP_ADDR}" --listen "127.0.0.1:${PORT}"
read -r RL_IR RL_N < <(instructions "http://127.0.0.1:${PORT}/v1/chat/completions")
stop

PORT="$("${LOADGEN}" freeport)"
start "${SWITCHYARD}" serve --config "${CONFIG}" --state "sqlite:${WORK}/state.db" \
  --listen "127.0.0.1:${PORT}" --admin-listen 127.0.0.1:0
read -r SY_IR SY_N < <(instructions "http://127.0.0.1:${PORT}/v1/chat/completions")
"${LOADGEN}" closed --url "http://127.0.0.1:${PORT}/v1/chat/completions" --conns 4 --warmup 0 --duration 2 --users "${RETURNING}" >/dev/null
read -r SR_IR SR_N < <(instructions "http://127.0.0.1:${PORT}/v1/chat/completions" "${RETURNING}")
stop

per() { awk -v i="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.0f", i / n; else printf "n/a" }'; }
RL_PER="$(per "${RL_IR}" "${RL_N}")"
SY_PER="$(per "${SY_IR}" "${SY_N}")"
SR_PER="$(per "${SR_IR}" "${SR_N}")"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }
verdict() { awk -v v="$1" 'BEGIN { if (v == "n/a") print "not measured"; else if (v + 0 <= 1.5) print "met"; else print "NOT met" }'; }
echo
echo "## Instructions per request (callgrind, user space)"
echo
echo "| target | requests | instructions per request | ratio to the relay | target | verdict |"
echo "|---|---:|---:|---:|---:|---|"
echo "| bare hyper relay | ${RL_N} | ${RL_PER} | 1.00 | | |"
echo "| switchyard, a new user per request | ${SY_N} | ${SY_PER} | $(ratio "${SY_PER}" "${RL_PER}") | ≤ 1.5 | $(verdict "$(ratio "${SY_PER}" "${RL_PER}")") |"
echo "| switchyard, ${RETURNING} returning users | ${SR_N} | ${SR_PER} | $(ratio "${SR_PER}" "${RL_PER}") | ≤ 1.5 | $(verdict "$(ratio "${SR_PER}" "${RL_PER}")") |"
