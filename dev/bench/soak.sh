#!/usr/bin/env bash
# dev/bench/soak.sh: the proxy under steady load for a long while, watching for growth.
#
# Starts the tiny upstream (dev/bench/upstream) behind the proxy's inbound listener, keeps one tap stream
# open on the admin port (every request is tapped, its events read and thrown away), and drives HTTP/1.1
# keep-alive requests at a fixed rate (dev/bench/load, open loop) for DURATION seconds. Every INTERVAL
# seconds it samples the proxy's RSS (/proc/PID/status), goroutines (go_goroutines on /metrics) and open
# file descriptors (/proc/PID/fd), and prints them; at the end, first/last/min/max of each and the load's
# own figures (requests, errors, p50, p99). A leak shows as a steady climb from the first samples to the
# last; flat figures after warm-up are the pass.
#
# Not part of any test run. Loopback only; everything started is stopped on exit.
# Settings (environment): DURATION (s, 600), RATE (req/s, 500), INTERVAL (s, 30), CONNS (keep-alive
# connections of the load, 32), TAP (1: keep a tap stream open; 0: none).
set -euo pipefail

DURATION=${DURATION:-600}
RATE=${RATE:-500}
INTERVAL=${INTERVAL:-30}
CONNS=${CONNS:-32}
TAP=${TAP:-1}

die() { echo "soak.sh: $*" >&2; exit 1; }
log() { echo "soak.sh: $*" >&2; }

for tool in go curl ss; do
	command -v "$tool" >/dev/null || die "missing $tool (Debian: apt-get install curl iproute2)"
done

cd "$(dirname "$0")/../.."
tmp=$(mktemp -d /tmp/meshscope-soak.XXXXXX)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building"
go build -o "$tmp/bin/" ./proxy ./dev/bench/upstream ./dev/bench/load

source dev/bench/ports.sh

upstream=$(free_port) inbound=$(free_port) admin=$(free_port)
"$tmp/bin/upstream" --listen "127.0.0.1:$upstream" >"$tmp/upstream.log" 2>&1 &
pids+=($!)
wait_port "$upstream" upstream
"$tmp/bin/proxy" --inbound-listen "127.0.0.1:$inbound" --inbound-forward "127.0.0.1:$upstream" \
	--outbound-listen "127.0.0.1:$(free_port)" --admin-listen "127.0.0.1:$admin" \
	--namespace soak --deployment upstream --pod upstream-0 >"$tmp/proxy.log" 2>&1 &
proxy=$!
pids+=($proxy)
wait_port "$inbound" proxy
wait_port "$admin" proxy

if [[ $TAP == 1 ]]; then
	curl -sN "http://127.0.0.1:$admin/tap?max_rps=10000" >/dev/null 2>"$tmp/tap.log" &
	pids+=($!)
fi

"$tmp/bin/load" --url "http://127.0.0.1:$inbound/" --rate "$RATE" --duration "${DURATION}s" \
	--conns "$CONNS" >"$tmp/load.out" 2>"$tmp/load.err" &
load=$!
pids+=($load)

sample() { # prints: seconds rss_kib goroutines fds
	local rss goroutines fds
	rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$proxy/status")
	goroutines=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^go_goroutines / {print $2}')
	fds=$(find "/proc/$proxy/fd" -mindepth 1 -maxdepth 1 | wc -l)
	echo "$1 $rss $goroutines $fds"
}

log "load: $RATE req/s for ${DURATION}s, tap stream $([[ $TAP == 1 ]] && echo open || echo none); a sample every ${INTERVAL}s"
printf '%8s %9s %11s %5s\n' seconds rss_MiB goroutines fds
start=$(date +%s)
: >"$tmp/samples"
while kill -0 "$load" 2>/dev/null; do
	s=$(sample $(($(date +%s) - start)))
	echo "$s" >>"$tmp/samples"
	awk '{printf "%8d %9.1f %11d %5d\n", $1, $2/1024, $3, $4}' <<<"$s"
	for _ in $(seq "$INTERVAL"); do
		kill -0 "$load" 2>/dev/null || break
		sleep 1
	done
done
wait "$load" || die "load failed: $(cat "$tmp/load.err")"
s=$(sample $(($(date +%s) - start)))
echo "$s" >>"$tmp/samples"
awk '{printf "%8d %9.1f %11d %5d\n", $1, $2/1024, $3, $4}' <<<"$s"

echo
echo "load: $(cat "$tmp/load.out")"
awk 'NR == 1 {for (i = 2; i <= 4; i++) {first[i] = $i; lo[i] = $i; hi[i] = $i}}
	{for (i = 2; i <= 4; i++) {last[i] = $i; if ($i < lo[i]) lo[i] = $i; if ($i > hi[i]) hi[i] = $i}}
	END {
		printf "rss MiB     first %.1f  last %.1f  min %.1f  max %.1f\n", first[2]/1024, last[2]/1024, lo[2]/1024, hi[2]/1024
		printf "goroutines  first %d  last %d  min %d  max %d\n", first[3], last[3], lo[3], hi[3]
		printf "fds         first %d  last %d  min %d  max %d\n", first[4], last[4], lo[4], hi[4]
	}' "$tmp/samples"
