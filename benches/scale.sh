#!/usr/bin/env bash
# Configuration at scale and start-up, in one command (also run by `SCALE=1 bash benches/load.sh`):
#
#   bash benches/scale.sh
#
#   1. start-up on the shipped proxy.toml (SQLite state): exec → first connection and first
#      answered chat request, STARTS times; idle RSS
#   2. a generated config of FLAGS flags × 4 variations × 3 rules (an audience rule, a 4-way
#      split, everyone else), all on a local fake provider:
#        - `switchyard check` wall time and peak RSS (load + validation)
#        - start-up time and idle RSS
#        - a closed-loop run over every flag with new users (every variation gets traffic):
#          RSS after it, `/metrics` scrape time and size
#        - the same with `[telemetry] latency_quantiles = false`, and with `model_label = false`
#        - hot reload under load: a closed-loop run while the file changes and SIGHUP is sent
#          RELOADS times; failed requests must be 0
#
# Knobs: FLAGS=1000, STARTS=5, RELOADS=5, DURATION=10 (seconds of each load run), SKIP_BUILD=1,
# SERVER_CPUS / LOAD_CPUS / NICE as in load.sh. The report is printed and written to
# target/bench/scale-report.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
FLAGS="${FLAGS:-1000}"
STARTS="${STARTS:-5}"
RELOADS="${RELOADS:-5}"
DURATION="${DURATION:-10}"

log() { printf '>> %s\n' "$*" >&2; }
die() {
  printf 'scale.sh: %s\n' "$*" >&2
  exit 1
}

PIDS=()
WORK="$(mktemp -d -t switchyard-scale.XXXXXX)"
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "${pid}" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 "${pid}" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "${pid}" 2>/dev/null || true
  done
  rm -rf "${WORK}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ON_SERVER=()
ON_LOAD=()
if (($(id -u) == 0)) && [[ "${NICE:--20}" != 0 ]]; then
  ON_SERVER+=(nice -n "${NICE:--20}")
  ON_LOAD+=(nice -n "${NICE:--20}")
fi
if (($(nproc) >= 2)) && command -v taskset >/dev/null 2>&1; then
  ON_SERVER+=(taskset -c "${SERVER_CPUS:-0}")
  ON_LOAD+=(taskset -c "${LOAD_CPUS:-1}")
fi

SWITCHYARD="${ROOT}/target/release/switchyard"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building (release)"
  cargo build --release --bin switchyard >&2
  cargo build --release --bench loadgen --message-format=json-render-diagnostics >"${WORK}/build.json"
  LOADGEN="$(grep -o '"executable":"[^"]*loadgen-[^"]*"' "${WORK}/build.json" | tail -1 | cut -d'"' -f4)"
else
  LOADGEN="$(ls -t "${ROOT}"/target/release/deps/loadgen-* 2>/dev/null | grep -v '\.d$' | head -1 || true)"
fi
[[ -x "${SWITCHYARD}" ]] || die "no ${SWITCHYARD}"
[[ -n "${LOADGEN}" && -x "${LOADGEN}" ]] || die "the loadgen bench binary was not found"

wait_line() {
  local file="$1" pattern="$2" pid="$3" line
  for _ in $(seq 1 200); do
    line="$(grep -m1 "${pattern}" "${file}" 2>/dev/null || true)"
    if [[ -n "${line}" ]]; then
      printf '%s\n' "${line}"
      return 0
    fi
    kill -0 "${pid}" 2>/dev/null || break
    sleep 0.05
  done
  return 1
}
field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }
rss_mb() { awk -v k="$2:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
stop() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$1" 2>/dev/null || true
}

# --- the fake provider ------------------------------------------------------------------------
"${ON_SERVER[@]}" "${LOADGEN}" upstream --listen 127.0.0.1:0 >"${WORK}/upstream.out" 2>"${WORK}/upstream.err" &
UP_PID=$!
PIDS+=("${UP_PID}")
UP_ADDR="$(wait_line "${WORK}/upstream.out" 'upstream listening on' "${UP_PID}" | sed 's#.*http://##')" ||
  die "the fake provider did not start"

# start CONFIG MODEL STATE: starts switchyard, sets SY_PID, SY_ADDR, SY_ADMIN, START (the
# loadgen `first` result line).
start() {
  local config="$1" model="$2" state="$3" port admin t0
  port="$("${LOADGEN}" freeport)"
  admin="$("${LOADGEN}" freeport)"
  t0="$(date +%s%N)"
  SWITCHYARD_LOG=warn "${ON_SERVER[@]}" "${SWITCHYARD}" serve --config "${config}" --state "${state}" \
    --listen "127.0.0.1:${port}" --admin-listen "127.0.0.1:${admin}" \
    >"${WORK}/switchyard.out" 2>"${WORK}/switchyard.err" &
  SY_PID=$!
  PIDS+=("${SY_PID}")
  START="$("${ON_LOAD[@]}" "${LOADGEN}" first --url "http://127.0.0.1:${port}/v1/chat/completions" \
    --model "${model}" --since-ns "${t0}" | grep '^result ' || true)"
  [[ -n "${START}" ]] || die "switchyard did not answer: $(tail -5 "${WORK}/switchyard.err")"
  SY_ADDR="127.0.0.1:${port}"
  SY_ADMIN="127.0.0.1:${admin}"
}

# scrape: median wall time (ms) of 3 scrapes of /metrics, its size (bytes) and sample lines.
scrape() {
  local times=() i out
  for i in 1 2 3; do
    out="$(curl -s -o "${WORK}/metrics.txt" -w '%{time_total}' "http://${SY_ADMIN}/metrics")"
    times+=("$(awk -v t="${out}" 'BEGIN { printf "%.1f", t * 1000 }')")
  done
  printf '%s %s %s\n' "$(printf '%s\n' "${times[@]}" | median)" \
    "$(wc -c <"${WORK}/metrics.txt")" "$(grep -vc '^#' "${WORK}/metrics.txt")"
}

# --- 1. start-up on the shipped config ---------------------------------------------------------
SHIPPED_MODEL="$(sed -n 's/^\[flags\.\([^].]*\)\]$/\1/p' proxy.toml | head -1)"
[[ -n "${SHIPPED_MODEL}" ]] || die "no flag in proxy.toml"
MOCK_LATENCY="$(sed -n 's/^latency = "\([0-9]*\)ms".*/\1/p' proxy.toml | head -1)"
FIRST=()
CONNECT=()
for i in $(seq 1 "${STARTS}"); do
  start proxy.toml "${SHIPPED_MODEL}" "sqlite:${WORK}/shipped-state.db"
  FIRST+=("$(field "${START}" first_answer_ms)")
  CONNECT+=("$(field "${START}" connect_ms)")
  if ((i == 1)); then
    sleep 1
    SHIPPED_IDLE_RSS="$(rss_mb "${SY_PID}" VmRSS)"
  fi
  stop "${SY_PID}"
done
log "shipped config: first answer ${FIRST[*]} ms, first connection ${CONNECT[*]} ms"

# --- 2. the generated config --------------------------------------------------------------------
gen_config() {
  local file="$1" telemetry="$2"
  {
    echo "# Generated by benches/scale.sh: ${FLAGS} flags × 4 variations × 3 rules."
    echo "[server]"
    echo 'drain_timeout = "1s"'
    echo "${telemetry}"
    echo "[providers.bench]"
    echo 'kind = "openai"'
    echo "base_url = \"http://${UP_ADDR}/v1\""
    echo "[prompts]"
    for p in 0 1 2 3; do echo "p${p} = \"You are support assistant number ${p}. Answer briefly.\""; done
    echo "[audiences.internal]"
    echo 'conditions = ["or", { attribute = "email", match = "substring", value = "@acme.example" }, { attribute = "team", match = "exact", value = "ai" }]'
    for ((f = 0; f < FLAGS; f++)); do
      echo "[flags.bench-${f}]"
      echo 'off_variation = "v0"'
      echo 'stable_variation = "v0"'
      for v in 0 1 2 3; do
        echo "[flags.bench-${f}.variations.v${v}]"
        echo 'provider = "bench"'
        echo "model_id = \"model-${v}\""
        echo "system_prompt_variant = \"p${v}\""
        echo "temperature = 0.${v}"
        echo "token_budget = $((800 + v * 100))"
      done
      echo "[[flags.bench-${f}.rules]]"
      echo 'id = "internal"'
      echo 'audience = "internal"'
      echo 'allocation = [{ variation = "v3", end = 10000 }]'
      echo "[[flags.bench-${f}.rules]]"
      echo "id = \"split-${f}\""
      echo 'allocation = [{ variation = "v0", end = 2500 }, { variation = "v1", end = 5000 }, { variation = "v2", end = 7500 }, { variation = "v3", end = 10000 }]'
      echo "[[flags.bench-${f}.rules]]"
      echo 'id = "everyone-else"'
      echo 'allocation = [{ variation = "v0", end = 10000 }]'
    done
  } >"${file}"
}

gen_config "${WORK}/scale.toml" ""
CONFIG_KB="$(($(wc -c <"${WORK}/scale.toml") / 1024))"
CHECK_MS=()
for _ in 1 2 3; do
  out="$(/usr/bin/time -f '%e %M' "${SWITCHYARD}" check --config "${WORK}/scale.toml" 2>&1 >/dev/null | tail -1)"
  CHECK_MS+=("$(awk -v s="${out%% *}" 'BEGIN { printf "%.0f", s * 1000 }')")
  CHECK_RSS="$(awk -v k="${out##* }" 'BEGIN { printf "%.1f", k / 1024 }')"
done
log "check: ${CHECK_MS[*]} ms, peak RSS ${CHECK_RSS} MB"

declare -A R
# scale_run NAME TELEMETRY: start on the generated config with that [telemetry] table, load
# every flag, record start-up, RSS and the scrape.
scale_run() {
  local name="$1" telemetry="$2" res
  gen_config "${WORK}/${name}.toml" "${telemetry}"
  start "${WORK}/${name}.toml" bench-0 "sqlite:${WORK}/${name}-state.db"
  R[$name.first]="$(field "${START}" first_answer_ms)"
  sleep 1
  R[$name.idle]="$(rss_mb "${SY_PID}" VmRSS)"
  log "${name}: ${FLAGS} flags, a closed loop over every flag (${DURATION} s)"
  res="$("${ON_LOAD[@]}" "${LOADGEN}" closed --url "http://${SY_ADDR}/v1/chat/completions" --model bench \
    --flags "${FLAGS}" --conns 16 --warmup 0 --duration "${DURATION}" | grep '^result ' || true)"
  R[$name.ok]="$(field "${res}" ok)"
  R[$name.errors]="$(field "${res}" errors)"
  R[$name.rss]="$(rss_mb "${SY_PID}" VmRSS)"
  R[$name.hwm]="$(rss_mb "${SY_PID}" VmHWM)"
  read -r R[$name.scrape_ms] R[$name.scrape_bytes] R[$name.samples] < <(scrape)
}

scale_run default ""
scale_run no_quantiles $'[telemetry]\nlatency_quantiles = false'
scale_run neither $'[telemetry]\nlatency_quantiles = false\nmodel_label = false'

# --- hot reload under load ------------------------------------------------------------------------
log "hot reload under load: ${RELOADS} reloads during a ${DURATION} s closed loop over every flag"
"${ON_LOAD[@]}" "${LOADGEN}" closed --url "http://${SY_ADDR}/v1/chat/completions" --model bench \
  --flags "${FLAGS}" --conns 16 --warmup 0 --duration "${DURATION}" >"${WORK}/reload-load.out" 2>&1 &
LOAD_PID=$!
PIDS+=("${LOAD_PID}")
gap="$(awk -v d="${DURATION}" -v n="${RELOADS}" 'BEGIN { printf "%.2f", d / (n + 1) }')"
for i in $(seq 1 "${RELOADS}"); do
  sleep "${gap}"
  # A real change each time: flag 0's first variation gets another token budget.
  sed -i "0,/^token_budget = [0-9]*/s//token_budget = $((900 + i))/" "${WORK}/neither.toml"
  kill -HUP "${SY_PID}"
done
wait "${LOAD_PID}" || true
RELOAD_RES="$(grep '^result ' "${WORK}/reload-load.out" | tail -1 || true)"
RELOADS_OK="$(curl -s "http://${SY_ADMIN}/metrics" | awk '/^switchyard_config_reloads_total\{result="ok"\}/ { print $2 }')"
stop "${SY_PID}"

# --- report -----------------------------------------------------------------------------------
REPORT="${ROOT}/target/bench/scale-report.md"
mkdir -p "$(dirname "${REPORT}")"
verdict() { awk -v v="$1" -v lim="$2" 'BEGIN { if (v == "" || v == "n/a") print "not measured"; else if (v + 0 <= lim + 0) print "met"; else print "NOT met" }'; }
FIRST_MED="$(printf '%s\n' "${FIRST[@]}" | median)"
CHECK_MED="$(printf '%s\n' "${CHECK_MS[@]}" | median)"
{
  echo "# Switchyard at scale and start-up"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); revision $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- generated config: ${FLAGS} flags × 4 variations × 3 rules (${CONFIG_KB} KB); load runs: ${DURATION} s closed loop, 16 connections, model cycling over every flag, a new user per request"
  echo
  echo "| figure | measured | target | verdict |"
  echo "|---|---:|---:|---|"
  echo "| start, shipped proxy.toml: exec → first answered chat request, median of ${STARTS} (all: ${FIRST[*]} ms; the mock provider's own latency, ${MOCK_LATENCY:-?} ms, included) | ${FIRST_MED} ms | ≤ 50 ms | $(verdict "${FIRST_MED}" 50) |"
  echo "| start, shipped proxy.toml: exec → first connection accepted, median | $(printf '%s\n' "${CONNECT[@]}" | median) ms | | |"
  echo "| idle RSS, shipped proxy.toml | ${SHIPPED_IDLE_RSS} MB | ≤ 20 MB | $(verdict "${SHIPPED_IDLE_RSS}" 20) |"
  echo "| ${FLAGS} flags: \`switchyard check\` (load + validation), median of 3 (${CHECK_MS[*]} ms) | ${CHECK_MED} ms | ≤ 1,000 ms | $(verdict "${CHECK_MED}" 1000) |"
  echo "| ${FLAGS} flags: peak RSS of \`switchyard check\` | ${CHECK_RSS} MB | | |"
  echo "| ${FLAGS} flags: exec → first answered request | ${R[default.first]} ms | | |"
  echo "| ${FLAGS} flags: idle RSS after start | ${R[default.idle]} MB | ≤ 100 MB | $(verdict "${R[default.idle]}" 100) |"
  echo "| ${FLAGS} flags: RSS after every variation served (${R[default.ok]} requests, ${R[default.errors]} errors) | ${R[default.rss]} MB (peak ${R[default.hwm]}) | ≤ 100 MB | $(verdict "${R[default.hwm]}" 100) |"
  echo "| ${FLAGS} flags: \`/metrics\` scrape, median of 3 | ${R[default.scrape_ms]} ms, $((R[default.scrape_bytes] / 1024)) KB, ${R[default.samples]} samples | ≤ 300 ms | $(verdict "${R[default.scrape_ms]}" 300) |"
  echo "| … with \`latency_quantiles = false\`: RSS after load / scrape | ${R[no_quantiles.rss]} MB (peak ${R[no_quantiles.hwm]}) / ${R[no_quantiles.scrape_ms]} ms, $((R[no_quantiles.scrape_bytes] / 1024)) KB, ${R[no_quantiles.samples]} samples | | |"
  echo "| … and \`model_label = false\`: RSS after load / scrape | ${R[neither.rss]} MB (peak ${R[neither.hwm]}) / ${R[neither.scrape_ms]} ms, $((R[neither.scrape_bytes] / 1024)) KB, ${R[neither.samples]} samples | | |"
  echo "| hot reload under load: ${RELOADS} SIGHUP reloads of the ${FLAGS}-flag file during a ${DURATION} s run | $(field "${RELOAD_RES}" ok) answered, $(field "${RELOAD_RES}" errors) failed; reloads ok: ${RELOADS_OK:-0} | 0 failed | $(verdict "$(field "${RELOAD_RES}" errors)" 0) |"
} >"${REPORT}"
cat "${REPORT}"
log "report written to ${REPORT}"
