#!/usr/bin/env bash
# Makes Prometheus' server and promtool available (Debian's `prometheus` package), without
# leaving a Prometheus daemon running: the tests start their own on a free port.
set -euo pipefail

have_prometheus() {
  command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1
}

if have_prometheus; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "Prometheus is missing and apt-get is unavailable: install Prometheus (server and promtool; Debian package 'prometheus') and run again" >&2
  exit 1
fi
sudo=()
if ((EUID != 0)); then
  if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
    echo "Prometheus is missing; installing Debian's 'prometheus' package needs root: run 'apt-get install prometheus' as root (then 'systemctl disable --now prometheus'), or run this as root" >&2
    exit 1
  fi
  sudo=(sudo -n)
fi
echo "installing Prometheus (Debian package prometheus; its service is kept from starting)"
# policy-rc.d tells the package's maintainer scripts not to start the service.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e "${policy}" ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "${policy}" >/dev/null
  "${sudo[@]}" chmod 0755 "${policy}"
  created_policy=1
fi
cleanup() {
  if ((created_policy)); then
    "${sudo[@]}" rm -f "${policy}"
  fi
}
trap cleanup EXIT
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
# Never start it at boot either; stop one that started regardless (no policy-rc.d honoured).
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
  "${sudo[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
  "${sudo[@]}" systemctl mask prometheus >/dev/null 2>&1 || true
fi
for pidfile in /run/prometheus/prometheus.pid /var/run/prometheus.pid; do
  if [[ -r "${pidfile}" ]]; then
    pid="$(cat "${pidfile}")"
    if [[ "$(readlink -f "/proc/${pid}/exe" 2>/dev/null)" == /usr/bin/prometheus ]]; then
      echo "stopping the Prometheus daemon the package started (pid ${pid})"
      "${sudo[@]}" kill "${pid}" || true
    fi
  fi
done
have_prometheus
