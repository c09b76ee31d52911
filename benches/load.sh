#!/usr/bin/env bash
# The load benchmark, in one command:
#
#   bash benches/load.sh
#
# Builds in release mode, starts a fast fake provider (`loadgen upstream`), Switchyard in
# front of it, and nginx as a plain reverse proxy when it is installed, then measures with
# `loadgen` (a Rust keep-alive HTTP/1.1 load generator):
#
#   1. latency at concurrency 1 (closed loop, one connection)        direct, switchyard, nginx, relay
#   2. saturation throughput (closed loop, CONNS connections)        direct, switchyard, nginx, relay
#   3. latency at a fixed moderate rate (open loop, RATE req/s)      direct, switchyard, nginx, relay
#   4. STREAMS concurrent SSE streams held open (chunks 100 ms apart) direct, switchyard
#   (2b. saturation with RETURNING returning end users instead of a new one per request:
#        switchyard; and CPU per request, user + system from /proc, of every proxy in run 2)
#
# then, behind knobs: CALLGRIND=1 user-space instructions per request of Switchyard and the
# bare relay (benches/callgrind.sh), SCALE=1 configuration at scale, start-up time and hot
# reload under load (benches/scale.sh).
#
# (relay: a bare hyper reverse proxy, `loadgen relay`, the floor of the stack Switchyard is
# built on) and prints a table (also written to target/bench/load-report.md) with the added latency
# (through − direct), Switchyard's throughput as a ratio of nginx's, stalls, Switchyard's idle
# and peak RSS, and the mean of its own `switchyard_overhead_seconds` histogram per phase.
#
# Knobs (environment):
#   DURATION=10        seconds measured per run (each run also warms up for 1 s)
#   CONNS=64           connections of the saturation run
#   RATE=2000          requests/s of the open-loop run
#   STREAMS=1000       concurrent streams (STREAMS=10000 for the 10k target; 0 skips)
#   STREAM_RAMP=1000   streams opened per second
#   STREAM_PROTO=auto  h1 (a connection per stream), h2 (100 streams per connection, prior
#                      knowledge), or auto: h1 unless the descriptor limit is too low for it
#   STREAM_UPSTREAM=h2 Switchyard to the provider in the stream run: h2 (h2c, one shared
#                      connection) or h1 (one connection per stream)
#   CHUNK_MS=100       time between the provider's chunks
#   SERVER_CPUS=0      CPUs for Switchyard and nginx (taskset -c)
#   UPSTREAM_CPUS=…    CPUs for the fake provider (default: SERVER_CPUS)
#   LOAD_CPUS=1        CPUs for the load generator
#   NICE=-20           priority of every process started (as root; NICE=0 leaves it alone)
#   RETURNING=1000     end users cycled in the returning-user saturation run (0 skips it)
#   INSTALL_NGINX=1    apt-get install nginx first when it is missing
#   SKIP_BUILD=1       use the binaries already built
#   CALLGRIND=1        also count instructions per request under valgrind (slow: ~2 min)
#   SCALE=1            also run benches/scale.sh (1,000 flags, start-up, reload under load)
#
# All traffic stays on 127.0.0.1; every run is bounded in time; every process started here
# is stopped on exit.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

DURATION="${DURATION:-10}"
CONNS="${CONNS:-64}"
RATE="${RATE:-2000}"
STREAMS="${STREAMS:-1000}"
STREAM_RAMP="${STREAM_RAMP:-1000}"
RETURNING="${RETURNING:-1000}"
CHUNK_MS="${CHUNK_MS:-100}"
STALL_MS=2000
WARMUP=1

log() { printf '>> %s\n' "$*" >&2; }
die() {
  printf 'load.sh: %s\n' "$*" >&2
  exit 1
}

# --- processes: every one started here is recorded and stopped on exit ---------------------
PIDS=()
WORK="$(mktemp -d -t switchyard-load.XXXXXX)"
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "${pid}" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    # Bounded wait, then force.
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

# --- CPU pinning and priority --------------------------------------------------------------
# Commands are prefixed by arrays rather than wrapped in functions, so that `$!` is the
# server's own PID (nice and taskset exec into it): RSS is read from it and it is stopped by it.
NPROC="$(nproc)"
ON_SERVER=()
ON_UPSTREAM=()
ON_LOAD=()
PRIORITY=0
if (($(id -u) == 0)) && [[ "${NICE:--20}" != 0 ]]; then
  # Raised priority, so that other work on the machine disturbs the figures less.
  PRIORITY="${NICE:--20}"
  ON_SERVER+=(nice -n "${PRIORITY}")
  ON_UPSTREAM+=(nice -n "${PRIORITY}")
  ON_LOAD+=(nice -n "${PRIORITY}")
fi
if ((NPROC >= 2)) && command -v taskset >/dev/null 2>&1; then
  SERVER_CPUS="${SERVER_CPUS:-0}"
  LOAD_CPUS="${LOAD_CPUS:-1}"
  UPSTREAM_CPUS="${UPSTREAM_CPUS:-${SERVER_CPUS}}"
  ON_SERVER+=(taskset -c "${SERVER_CPUS}")
  ON_UPSTREAM+=(taskset -c "${UPSTREAM_CPUS}")
  ON_LOAD+=(taskset -c "${LOAD_CPUS}")
  PINNING="switchyard and nginx on CPU ${SERVER_CPUS}, fake provider on CPU ${UPSTREAM_CPUS}, load generator on CPU ${LOAD_CPUS}"
else
  PINNING="not pinned (${NPROC} CPU, or no taskset)"
fi
PINNING="${PINNING}; nice ${PRIORITY}"

# Over HTTP/1.1 every stream is a connection: one descriptor in the load generator, two in the
# proxy (client and provider side). Where the limit cannot be raised that far (it takes
# CAP_SYS_RESOURCE to pass the hard limit), the streams go over HTTP/2 to the proxy, which
# then holds one provider connection per stream and a few client connections.
want_fds=$((STREAMS * 2 + 1024))
if (($(ulimit -n) < want_fds)); then
  ulimit -n "${want_fds}" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
STREAM_PROTO="${STREAM_PROTO:-auto}"
# Switchyard to the provider in the stream run: h2 (h2c, every stream on one connection, as
# HTTP/2 over TLS to a real provider would be) or h1 (a provider connection per stream).
STREAM_UPSTREAM="${STREAM_UPSTREAM:-h2}"
case "${STREAM_UPSTREAM}" in
  h2) STREAM_MODEL=bench-h2 ;;
  h1) STREAM_MODEL=bench ;;
  *) die "STREAM_UPSTREAM must be h1 or h2" ;;
esac
if [[ "${STREAM_PROTO}" == auto ]]; then
  if (($(ulimit -n) >= want_fds)); then STREAM_PROTO=h1; else STREAM_PROTO=h2; fi
fi
if [[ "${STREAM_PROTO}" == h1 ]] && (($(ulimit -n) < want_fds)); then
  log "warning: ulimit -n is $(ulimit -n); ${STREAMS} HTTP/1.1 streams need about ${want_fds}"
fi

# --- build ----------------------------------------------------------------------------------
SWITCHYARD="${ROOT}/target/release/switchyard"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building (release)"
  cargo build --release --bin switchyard >&2
  cargo build --release --bench loadgen --message-format=json-render-diagnostics \
    >"${WORK}/build.json"
  LOADGEN="$(grep -o '"executable":"[^"]*loadgen-[^"]*"' "${WORK}/build.json" | tail -1 | cut -d'"' -f4)"
else
  LOADGEN="$(ls -t "${ROOT}"/target/release/deps/loadgen-* 2>/dev/null | grep -v '\.d$' | head -1 || true)"
fi
[[ -x "${SWITCHYARD}" ]] || die "no ${SWITCHYARD}"
[[ -n "${LOADGEN}" && -x "${LOADGEN}" ]] || die "the loadgen bench binary was not found"

# --- functions ------------------------------------------------------------------------------
# wait_line FILE PATTERN PID: prints the first line of FILE matching PATTERN (10 s at most).
wait_line() {
  local file="$1" pattern="$2" pid="$3" line
  for _ in $(seq 1 100); do
    line="$(grep -m1 "${pattern}" "${file}" 2>/dev/null || true)"
    if [[ -n "${line}" ]]; then
      printf '%s\n' "${line}"
      return 0
    fi
    kill -0 "${pid}" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}

# field LINE KEY: the value of key=value in a `result …` line.
field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }

# rss PID KEY: a /proc status size (VmRSS, VmHWM) in MB.
rss_mb() { awk -v k="$2:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# cpu_s PID: user + system CPU seconds used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }

# cpu_tree_s PID: cpu_s of PID and its children (nginx's worker is the master's child).
cpu_tree_s() {
  local total child
  total="$(cpu_s "$1")"
  for child in $(pgrep -P "$1" 2>/dev/null || true); do
    total="$(awk -v a="${total}" -v b="$(cpu_s "${child}")" 'BEGIN { printf "%.2f", a + b }')"
  done
  printf '%s\n' "${total}"
}

calc() { awk "BEGIN { printf \"$1\", $2 }"; }

# measure NAME ARGS…: runs loadgen on the load CPUs, returns its result line.
measure() {
  local out
  out="$("${ON_LOAD[@]}" "${LOADGEN}" "$@" 2>>"${WORK}/loadgen.err" | grep '^result ' | tail -1 || true)"
  [[ -n "${out}" ]] || {
    cat "${WORK}/loadgen.err" >&2
    die "loadgen $1 gave no result"
  }
  printf '%s\n' "${out}"
}

# --- fake provider --------------------------------------------------------------------------
# Long enough streams that every stream is open at once: the ramp, plus 3 s held.
STREAM_CHUNKS=$(awk -v n="${STREAMS}" -v r="${STREAM_RAMP}" -v c="${CHUNK_MS}" \
  'BEGIN { k = int(((n / r) + 3) * 1000 / c) + 1; if (k < 20) k = 20; print k }')
"${ON_UPSTREAM[@]}" "${LOADGEN}" upstream --listen 127.0.0.1:0 --chunks "${STREAM_CHUNKS}" \
  --interval-ms "${CHUNK_MS}" >"${WORK}/upstream.out" 2>"${WORK}/upstream.err" &
UP_PID=$!
PIDS+=("${UP_PID}")
UP_ADDR="$(wait_line "${WORK}/upstream.out" 'upstream listening on' "${UP_PID}" | sed 's#.*http://##')" ||
  die "the fake provider did not start: $(cat "${WORK}/upstream.err")"
log "fake provider on ${UP_ADDR}"

# --- switchyard -----------------------------------------------------------------------------
cat >"${WORK}/switchyard.toml" <<EOF
# Generated by benches/load.sh: one flag, an audience rule evaluated for every request, a
# 50/50 split between two variations, both on the local fake provider.
[server]
max_body_bytes = 1048576
drain_timeout = "1s"

[providers.bench]
kind = "openai"
base_url = "http://${UP_ADDR}/v1"

[prompts]
concise = "You are a concise support assistant. Answer in at most three sentences."
warm = "You are a warm, patient support assistant. Acknowledge the problem before answering."

[audiences.internal-team]
conditions = ["or", { attribute = "email", match = "substring", value = "@acme.example" },
                    { attribute = "team", match = "exact", value = "ai" }]

[flags.bench]
off_variation = "control"
stable_variation = "control"

[flags.bench.variations.control]
provider = "bench"
model_id = "gpt-4o"
system_prompt_variant = "concise"
temperature = 0.3
token_budget = 1200

[flags.bench.variations.treatment]
provider = "bench"
model_id = "gpt-4o-mini"
system_prompt_variant = "warm"
temperature = 0.7
token_budget = 800

[[flags.bench.rules]]
id = "internal-first"
audience = "internal-team"
allocation = [{ variation = "treatment", end = 10000 }]

[[flags.bench.rules]]
id = "ab-bench"
allocation = [{ variation = "control", end = 5000 }, { variation = "treatment", end = 10000 }]

[[flags.bench.rules]]
id = "everyone-else"
allocation = [{ variation = "control", end = 10000 }]

# The stream run's flag: the same, over HTTP/2 to the provider (h2c, one shared connection).
[providers.bench-h2]
kind = "openai"
base_url = "http://${UP_ADDR}/v1"
http2_prior_knowledge = true

[flags.bench-h2]
off_variation = "control"
stable_variation = "control"

[flags.bench-h2.variations.control]
provider = "bench-h2"
model_id = "gpt-4o"
system_prompt_variant = "concise"
temperature = 0.3
token_budget = 1200

[flags.bench-h2.variations.treatment]
provider = "bench-h2"
model_id = "gpt-4o-mini"
system_prompt_variant = "warm"
temperature = 0.7
token_budget = 800

[[flags.bench-h2.rules]]
id = "ab-bench-h2"
allocation = [{ variation = "control", end = 5000 }, { variation = "treatment", end = 10000 }]
EOF
SWITCHYARD_LOG=warn "${ON_SERVER[@]}" "${SWITCHYARD}" serve --config "${WORK}/switchyard.toml" \
  --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >"${WORK}/switchyard.out" 2>"${WORK}/switchyard.err" &
SY_PID=$!
PIDS+=("${SY_PID}")
SY_ADDR="$(wait_line "${WORK}/switchyard.out" '^switchyard listening on' "${SY_PID}" | sed 's#.*http://##')" ||
  die "switchyard did not start: $(cat "${WORK}/switchyard.err")"
SY_ADMIN="$(wait_line "${WORK}/switchyard.out" '^switchyard admin listening on' "${SY_PID}" | sed 's#.*http://##')" ||
  die "switchyard's admin listener did not start"
log "switchyard on ${SY_ADDR} (admin ${SY_ADMIN})"

# --- nginx (optional) -----------------------------------------------------------------------
if ! command -v nginx >/dev/null 2>&1 && [[ "${INSTALL_NGINX:-0}" == 1 ]]; then
  log "installing nginx"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 || true
  apt-get install -y -q nginx-light >&2 || apt-get install -y -q nginx >&2 || log "could not install nginx"
fi
NG_ADDR=""
if command -v nginx >/dev/null 2>&1; then
  NG_PORT="$("${LOADGEN}" freeport)"
  mkdir -p "${WORK}/nginx/tmp"
  cat >"${WORK}/nginx/nginx.conf" <<EOF
# Generated by benches/load.sh: a plain reverse proxy, one worker, upstream keep-alive.
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid ${WORK}/nginx/nginx.pid;
error_log ${WORK}/nginx/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path ${WORK}/nginx/tmp/body;
  proxy_temp_path ${WORK}/nginx/tmp/proxy;
  fastcgi_temp_path ${WORK}/nginx/tmp/fastcgi;
  uwsgi_temp_path ${WORK}/nginx/tmp/uwsgi;
  scgi_temp_path ${WORK}/nginx/tmp/scgi;
  upstream provider {
    server ${UP_ADDR};
    keepalive 256;
  }
  server {
    listen 127.0.0.1:${NG_PORT};
    keepalive_requests 1000000;
    location / {
      proxy_pass http://provider;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  "${ON_SERVER[@]}" nginx -e "${WORK}/nginx/error.log" -p "${WORK}/nginx" -c "${WORK}/nginx/nginx.conf" \
    >"${WORK}/nginx/out.log" 2>&1 &
  NG_PID=$!
  PIDS+=("${NG_PID}")
  for _ in $(seq 1 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/${NG_PORT}") 2>/dev/null; then
      NG_ADDR="127.0.0.1:${NG_PORT}"
      break
    fi
    kill -0 "${NG_PID}" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -n "${NG_ADDR}" ]]; then
    log "nginx $(nginx -v 2>&1 | sed 's#.*/##') on ${NG_ADDR}"
  else
    log "nginx did not start: $(cat "${WORK}/nginx/error.log" "${WORK}/nginx/out.log" 2>/dev/null)"
  fi
else
  log "nginx not installed: no nginx comparison (INSTALL_NGINX=1 installs it)"
fi

# --- bare hyper relay ------------------------------------------------------------------------
# The same stack as Switchyard (hyper server, hyper-util pooled client, tokio) forwarding bytes
# and doing nothing else: the floor of any proxy built on it, so the report can tell the
# stack's share of a gap to nginx from Switchyard's own.
"${ON_SERVER[@]}" "${LOADGEN}" relay --upstream "${UP_ADDR}" --listen 127.0.0.1:0 \
  >"${WORK}/relay.out" 2>"${WORK}/relay.err" &
RL_PID=$!
PIDS+=("${RL_PID}")
RL_ADDR="$(wait_line "${WORK}/relay.out" 'relay listening on' "${RL_PID}" | sed 's#.*http://##')" ||
  die "the bare relay did not start: $(cat "${WORK}/relay.err")"
log "bare hyper relay on ${RL_ADDR}"

PATH_CHAT=/v1/chat/completions
TARGETS=(direct switchyard)
declare -A URL=([direct]="http://${UP_ADDR}${PATH_CHAT}" [switchyard]="http://${SY_ADDR}${PATH_CHAT}")
declare -A PID_OF=([direct]="${UP_PID}" [switchyard]="${SY_PID}" [relay]="${RL_PID}")
[[ -n "${NG_ADDR}" ]] && PID_OF[nginx]="${NG_PID}" 
if [[ -n "${NG_ADDR}" ]]; then
  TARGETS+=(nginx)
  URL[nginx]="http://${NG_ADDR}${PATH_CHAT}"
fi
TARGETS+=(relay)
URL[relay]="http://${RL_ADDR}${PATH_CHAT}"
# Each run sends model = "bench": the flag through Switchyard, an opaque name elsewhere.

sleep 1
IDLE_RSS="$(rss_mb "${SY_PID}" VmRSS)"
log "switchyard idle RSS ${IDLE_RSS} MB"

overhead() { measure overhead --url "http://${SY_ADMIN}/metrics"; }
# overhead_delta BEFORE AFTER: mean proxy time (µs) of the requests recorded in between.
overhead_delta() {
  awk -v s0="$(field "$1" sum_s)" -v c0="$(field "$1" count)" \
    -v s1="$(field "$2" sum_s)" -v c1="$(field "$2" count)" \
    'BEGIN { if (c1 > c0) printf "%.1f", (s1 - s0) / (c1 - c0) * 1e6; else printf "n/a" }'
}

# --- 1. concurrency 1 -----------------------------------------------------------------------
declare -A C1 SAT OPEN
OH0="$(overhead)"
for t in "${TARGETS[@]}"; do
  log "concurrency 1 → ${t} (${DURATION} s)"
  C1[$t]="$(measure closed --url "${URL[$t]}" --conns 1 --warmup "${WARMUP}" --duration "${DURATION}")"
done
OH1="$(overhead)"

# --- 2. saturation --------------------------------------------------------------------------
declare -A CPU_US
for t in "${TARGETS[@]}"; do
  log "saturation, ${CONNS} connections → ${t} (${DURATION} s)"
  c0="$(cpu_tree_s "${PID_OF[$t]}")"
  SAT[$t]="$(measure closed --url "${URL[$t]}" --conns "${CONNS}" --warmup "${WARMUP}" --duration "${DURATION}")"
  c1="$(cpu_tree_s "${PID_OF[$t]}")"
  # CPU over warm-up and run, per request answered in the run (the warm-up's requests are
  # not counted, so this overstates by up to WARMUP/DURATION; the same for every target).
  CPU_US[$t]="$(awk -v a="${c0}" -v b="${c1}" -v n="$(field "${SAT[$t]}" ok)" -v w="${WARMUP}" -v d="${DURATION}" \
    'BEGIN { if (n > 0) printf "%.1f", (b - a) / (n * (1 + w / d)) * 1e6; else printf "n/a" }')"
done
OH2="$(overhead)"
SAT_RET=""
if ((RETURNING > 0)); then
  log "saturation, ${CONNS} connections, ${RETURNING} returning users → switchyard (${DURATION} s)"
  # One pass over the users first, so that every one of them is returning in the run.
  measure closed --url "${URL[switchyard]}" --conns "${CONNS}" --warmup 0 --duration 1 --users "${RETURNING}" >/dev/null
  c0="$(cpu_tree_s "${SY_PID}")"
  SAT_RET="$(measure closed --url "${URL[switchyard]}" --conns "${CONNS}" --warmup "${WARMUP}" --duration "${DURATION}" --users "${RETURNING}")"
  c1="$(cpu_tree_s "${SY_PID}")"
  CPU_US[returning]="$(awk -v a="${c0}" -v b="${c1}" -v n="$(field "${SAT_RET}" ok)" -v w="${WARMUP}" -v d="${DURATION}" \
    'BEGIN { if (n > 0) printf "%.1f", (b - a) / (n * (1 + w / d)) * 1e6; else printf "n/a" }')"
fi
OH2R="$(overhead)"

# --- 3. open loop ---------------------------------------------------------------------------
for t in "${TARGETS[@]}"; do
  log "open loop, ${RATE} req/s → ${t} (${DURATION} s)"
  OPEN[$t]="$(measure open --url "${URL[$t]}" --rate "${RATE}" --conns "${CONNS}" --duration "${DURATION}")"
done
OH3="$(overhead)"
RSS_AFTER_REQUESTS="$(rss_mb "${SY_PID}" VmHWM)"

# --- 4. streams -----------------------------------------------------------------------------
declare -A STR
STREAM_TARGETS=()
if ((STREAMS > 0)); then
  STREAM_TARGETS=(direct switchyard)
  for t in "${STREAM_TARGETS[@]}"; do
    if [[ "$t" == switchyard ]]; then
      CPU0="$(cpu_s "${SY_PID}")"
      WALL0="$(date +%s.%N)"
    fi
    log "${STREAMS} streams over ${STREAM_PROTO}, ${STREAM_CHUNKS} chunks ${CHUNK_MS} ms apart → ${t}"
    STR[$t]="$(measure streams --url "${URL[$t]}" --model "${STREAM_MODEL}" --streams "${STREAMS}" --ramp "${STREAM_RAMP}" \
      --chunks "${STREAM_CHUNKS}" --interval-ms "${CHUNK_MS}" --stall-ms "${STALL_MS}" \
      --proto "${STREAM_PROTO}")"
  done
  STREAM_CPU="$(awk -v c0="${CPU0}" -v c1="$(cpu_s "${SY_PID}")" -v w0="${WALL0}" -v w1="$(date +%s.%N)" \
    'BEGIN { printf "%.1f s of CPU in %.1f s (%.0f %% of one core)", c1 - c0, w1 - w0, (c1 - c0) / (w1 - w0) * 100 }')"
fi
PEAK_RSS="$(rss_mb "${SY_PID}" VmHWM)"
OH4="$(overhead)"
kill -0 "${SY_PID}" 2>/dev/null || die "switchyard died during the run: $(tail -5 "${WORK}/switchyard.err")"

# --- report ---------------------------------------------------------------------------------
if [[ -s "${WORK}/loadgen.err" ]]; then
  log "load generator notes:"
  sed 's/^/   /' "${WORK}/loadgen.err" >&2
fi
us() { [[ -n "$1" ]] && printf '%s' "$1" || printf 'n/a'; }
added() { calc "%+.0f" "$1 - $2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }
verdict() { awk -v v="$1" -v lim="$2" -v dir="$3" \
  'BEGIN { if (v == "n/a" || v == "") print "not measured"; else if ((dir == "le" && v + 0 <= lim + 0) || (dir == "ge" && v + 0 >= lim + 0)) print "met"; else print "NOT met" }'; }

# The added-latency verdict only means something when the direct p99 is well under the target.
latency_verdict() {
  awk -v added="$1" -v direct="$2" -v lim="$3" 'BEGIN {
    if (added == "" || direct == "") print "not measured";
    else if (direct + 0 > 10 * lim || added + 0 < 0) printf "inconclusive: direct p99 is %d µs (machine noise)\n", direct;
    else if (added + 0 <= lim + 0) print "met"; else print "NOT met" }'
}

CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null || true)" ]]; then
  REV="${REV}+local changes"
fi
REPORT_DIR="${ROOT}/target/bench"
mkdir -p "${REPORT_DIR}"
REPORT="${REPORT_DIR}/load-report.md"

D_C1_P50="$(field "${C1[direct]}" p50_us)"
D_C1_P99="$(field "${C1[direct]}" p99_us)"
S_C1_P50="$(field "${C1[switchyard]}" p50_us)"
S_C1_P99="$(field "${C1[switchyard]}" p99_us)"
ADDED_P50="$(added "${S_C1_P50}" "${D_C1_P50}")"
ADDED_P99="$(added "${S_C1_P99}" "${D_C1_P99}")"
SY_RPS="$(field "${SAT[switchyard]}" rps)"
NG_RPS=""
[[ -n "${NG_ADDR}" ]] && NG_RPS="$(field "${SAT[nginx]}" rps)"
VS_NGINX="$( [[ -n "${NG_RPS}" ]] && ratio "${SY_RPS}" "${NG_RPS}" || echo n/a)"
RL_RPS="$(field "${SAT[relay]}" rps)"
RL_VS_NGINX="$( [[ -n "${NG_RPS}" ]] && ratio "${RL_RPS}" "${NG_RPS}" || echo n/a)"

{
  echo "# Switchyard load benchmark"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: ${NPROC} CPU, ${CPU_MODEL}; $(uname -sr)"
  echo "- revision: ${REV}"
  echo "- pinning: ${PINNING}"
  echo "- settings: DURATION=${DURATION}s per run (+${WARMUP}s warm-up), CONNS=${CONNS}, RATE=${RATE}/s, STREAMS=${STREAMS} over ${STREAM_PROTO}, Switchyard to the provider over ${STREAM_UPSTREAM} (opened at ${STREAM_RAMP}/s, ${STREAM_CHUNKS} chunks ${CHUNK_MS} ms apart); ulimit -n $(ulimit -n)"
  echo "- request: ~0.7 KB chat body, model = flag \`bench\` (audience rule evaluated, then a 50/50 split), a new end user per request (the returning-user run: ${RETURNING} users cycled)"
  echo
  echo "## Requests"
  echo
  echo "| run | target | ok | errors | req/s | p50 µs | p90 µs | p99 µs | max µs |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
  for t in "${TARGETS[@]}"; do
    r="${C1[$t]}"
    echo "| concurrency 1 | ${t} | $(field "$r" ok) | $(field "$r" errors) | $(field "$r" rps) | $(field "$r" p50_us) | $(field "$r" p90_us) | $(field "$r" p99_us) | $(field "$r" max_us) |"
  done
  for t in "${TARGETS[@]}"; do
    r="${SAT[$t]}"
    echo "| saturation, ${CONNS} conns | ${t} | $(field "$r" ok) | $(field "$r" errors) | $(field "$r" rps) | $(field "$r" p50_us) | $(field "$r" p90_us) | $(field "$r" p99_us) | $(field "$r" max_us) |"
  done
  if [[ -n "${SAT_RET}" ]]; then
    r="${SAT_RET}"
    echo "| saturation, ${CONNS} conns, ${RETURNING} returning users | switchyard | $(field "$r" ok) | $(field "$r" errors) | $(field "$r" rps) | $(field "$r" p50_us) | $(field "$r" p90_us) | $(field "$r" p99_us) | $(field "$r" max_us) |"
  fi
  for t in "${TARGETS[@]}"; do
    r="${OPEN[$t]}"
    echo "| open loop, ${RATE}/s | ${t} | $(field "$r" ok) | $(field "$r" errors) | $(field "$r" achieved_rate) | $(field "$r" p50_us) | $(field "$r" p90_us) | $(field "$r" p99_us) | $(field "$r" max_us) |"
  done
  echo
  if ((STREAMS > 0)); then
    echo "## Streams"
    echo
    echo "| target | streams | peak open | ok | failed | stalled | TTFT p50 µs | TTFT p99 µs | TTFT max µs | longest gap ms |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in "${STREAM_TARGETS[@]}"; do
      r="${STR[$t]}"
      echo "| ${t} | $(field "$r" streams) | $(field "$r" peak_open) | $(field "$r" ok) | $(field "$r" failed) | $(field "$r" stalled) | $(field "$r" ttft_p50_us) | $(field "$r" ttft_p99_us) | $(field "$r" ttft_max_us) | $(field "$r" max_gap_ms) |"
    done
    echo
  fi
  echo "## Switchyard against the targets"
  echo
  echo "| figure | measured | target | verdict |"
  echo "|---|---:|---:|---|"
  echo "| added latency p50, concurrency 1 (switchyard − direct) | ${ADDED_P50} µs | | |"
  echo "| added latency p99, concurrency 1 (switchyard − direct) | ${ADDED_P99} µs | ≤ 100 µs | $(latency_verdict "${ADDED_P99}" "${D_C1_P99}" 100) |"
  echo "| mean of switchyard_overhead_seconds, concurrency-1 run | $(overhead_delta "${OH0}" "${OH1}") µs | | |"
  echo "| added latency p50 / p99, open loop ${RATE}/s | $(added "$(field "${OPEN[switchyard]}" p50_us)" "$(field "${OPEN[direct]}" p50_us)") / $(added "$(field "${OPEN[switchyard]}" p99_us)" "$(field "${OPEN[direct]}" p99_us)") µs | | |"
  echo "| mean of switchyard_overhead_seconds, open-loop run | $(overhead_delta "${OH2R}" "${OH3}") µs | | |"
  echo "| saturation throughput | ${SY_RPS} req/s | | |"
  echo "| … as a ratio of direct | $(ratio "${SY_RPS}" "$(field "${SAT[direct]}" rps)") | | |"
  echo "| … as a ratio of nginx | ${VS_NGINX} | ≥ 0.90 | $(verdict "${VS_NGINX}" 0.9 ge) |"
  echo "| mean of switchyard_overhead_seconds, saturation run | $(overhead_delta "${OH1}" "${OH2}") µs | | |"
  if [[ -n "${SAT_RET}" ]]; then
    SY_RET_RPS="$(field "${SAT_RET}" rps)"
    echo "| saturation throughput, ${RETURNING} returning users | ${SY_RET_RPS} req/s | | |"
    echo "| … as a ratio of nginx | $( [[ -n "${NG_RPS}" ]] && ratio "${SY_RET_RPS}" "${NG_RPS}" || echo n/a) | ≥ 0.90 | $( [[ -n "${NG_RPS}" ]] && verdict "$(ratio "${SY_RET_RPS}" "${NG_RPS}")" 0.9 ge || echo "not measured") |"
  fi
  for t in "${TARGETS[@]}"; do
    echo "| CPU per request (user + system, /proc) at saturation: ${t} | ${CPU_US[$t]} µs | | |"
  done
  [[ -n "${SAT_RET}" ]] && echo "| CPU per request at saturation: switchyard, returning users | ${CPU_US[returning]} µs | | |"
  if [[ -n "${NG_ADDR}" ]]; then
    CPU_RATIO="$(ratio "${CPU_US[switchyard]}" "${CPU_US[nginx]}")"
    echo "| CPU per request: switchyard ÷ nginx | ${CPU_RATIO} | ≤ 1.5 | $(verdict "${CPU_RATIO}" 1.5 le) |"
  fi
  echo "| CPU per request: switchyard ÷ bare relay | $(ratio "${CPU_US[switchyard]}" "${CPU_US[relay]}") | | |"
  echo "| bare hyper relay (the stack's floor): saturation as a ratio of nginx | ${RL_VS_NGINX} | | |"
  echo "| switchyard as a ratio of the bare relay | $(ratio "${SY_RPS}" "${RL_RPS}") | | |"
  echo "| added latency p50 / p99 of the bare relay, concurrency 1 | $(added "$(field "${C1[relay]}" p50_us)" "${D_C1_P50}") / $(added "$(field "${C1[relay]}" p99_us)" "${D_C1_P99}") µs | | |"
  if [[ -n "${NG_ADDR}" ]]; then
    NG_ADDED_P50="$(added "$(field "${C1[nginx]}" p50_us)" "${D_C1_P50}")"
    P50_OVER="$(calc "%.0f" "${ADDED_P50} - ${NG_ADDED_P50}")"
    echo "| added latency p50 / p99 of nginx, concurrency 1 | ${NG_ADDED_P50} / $(added "$(field "${C1[nginx]}" p99_us)" "${D_C1_P99}") µs | | |"
    echo "| added p50: switchyard − nginx | ${P50_OVER} µs | ≤ 20 µs | $(verdict "${P50_OVER}" 20 le) |"
  fi
  if ((STREAMS > 0)); then
    S="${STR[switchyard]}"
    D="${STR[direct]}"
    STALLS="$(field "$S" bad)"
    echo "| added TTFT p99, ${STREAMS} streams | $(added "$(field "$S" ttft_p99_us)" "$(field "$D" ttft_p99_us)") µs | | |"
    echo "| streams stalled or failed, of ${STREAMS} (peak open $(field "$S" peak_open)) | ${STALLS} | 0 | $(verdict "${STALLS}" 0 le) |"
    echo "| switchyard CPU during the ${STREAMS}-stream run | ${STREAM_CPU} | | |"
    echo "| peak RSS (VmHWM) after ${STREAMS} streams | ${PEAK_RSS} MB | ≤ 200 MB at 10,000 | $( ((STREAMS >= 10000)) && verdict "${PEAK_RSS}" 200 le || echo "run STREAMS=10000") |"
  fi
  echo "| peak RSS (VmHWM) after the request runs | ${RSS_AFTER_REQUESTS} MB | | |"
  echo "| idle RSS (VmRSS before load) | ${IDLE_RSS} MB | ≤ 20 MB | $(verdict "${IDLE_RSS}" 20 le) |"
  echo "| mean of switchyard_overhead_seconds, whole run | $(field "${OH4}" mean_us) µs over $(field "${OH4}" count) requests | | |"
  echo
  echo "Targets: \`direct\` is the fake provider itself, \`relay\` a bare hyper reverse proxy (\`loadgen relay\`: the same hyper/tokio stack, no parsing, no decision, no metrics)."
  echo "Latencies are measured by the load generator; \"added\" is Switchyard's figure minus the direct one from the same invocation. The decision target (≤ 200 ns) is measured by \`cargo bench --bench micro -- decide\`."
} >"${REPORT}"

cat "${REPORT}"
log "report written to ${REPORT}"

# --- instructions per request, configuration at scale ------------------------------------------
if [[ "${CALLGRIND:-0}" == 1 ]]; then
  log "instructions per request under callgrind (about 2 minutes)"
  LOADGEN="${LOADGEN}" SWITCHYARD="${SWITCHYARD}" CONFIG="${WORK}/switchyard.toml" UP_ADDR="${UP_ADDR}" \
    RETURNING="${RETURNING}" "${ON_SERVER[@]}" bash "${ROOT}/benches/callgrind.sh" | tee -a "${REPORT}"
fi
if [[ "${SCALE:-0}" == 1 ]]; then
  SKIP_BUILD=1 bash "${ROOT}/benches/scale.sh" | tee -a "${REPORT}"
fi

# --- experiment data at scale ------------------------------------------------------------------
# Feedback ingestion (events/s in batches of 100) and the results computation with EXPOSURES
# (default 1,000,000) stored, on SQLite and, when reachable, PostgreSQL. EXPERIMENTS=0 skips it.
if [[ "${EXPERIMENTS:-1}" != 0 ]]; then
  log "experiment data: ${EXPOSURES:-1000000} exposures, feedback ingestion, results latency"
  EXPOSURES="${EXPOSURES:-1000000}" cargo bench --bench experiments 2>/dev/null | tee -a "${REPORT}"
fi
