#!/usr/bin/env bash
# Measures the demo's performance targets (dev/BENCHMARKS.md "Demo"): seconds from
# "go run ./dev" to the first dashboard page with data, then the whole
# demo's CPU and memory while it idles on its own traffic, from ps.
#   bash dev/measure.sh [extra go run ./dev flags, e.g. --backend=embedded]
set -euo pipefail
set -m # the demo gets its own process group, so Ctrl-C's SIGINT reaches it as from a terminal
cd "$(dirname "$0")/.."
dash=127.0.0.1:8084
log=$(mktemp)
start=$(date +%s.%N)
go run ./dev "$@" >"$log" 2>&1 &
gorun=$!
trap 'kill -INT -- -$gorun 2>/dev/null; wait $gorun 2>/dev/null || true; rm -f "$log"' EXIT

# First page with data: the namespaces JSON twin has a success rate.
until curl -fsS "http://$dash/api/v1/namespaces" 2>/dev/null | grep -Eq '"success_rate": *[0-9]'; do
	if ! kill -0 $gorun 2>/dev/null; then cat "$log"; exit 1; fi
	sleep 0.5
done
echo "first page with data after $(echo "$(date +%s.%N) - $start" | bc) s"

# Every process of the demo: descendants of go run.
tree() {
	local pids=$1 next=$1
	while [ -n "$next" ]; do
		next=$(ps -o pid= --ppid "$(echo $next | tr ' ' ,)" | tr -s ' \n' ' ' || true)
		next=${next# }; next=${next% }
		[ -n "$next" ] && pids="$pids $next"
	done
	echo $pids
}
# RSS from ps (KiB); CPU from /proc/PID/stat utime+stime (clock ticks), finer than ps' seconds.
sample() {
	local pids rss ticks=0 pid
	pids=$(tree $gorun)
	rss=$(ps -o rss= -p "$(echo $pids | tr ' ' ,)" | awk '{r+=$1} END {print r}')
	for pid in $pids; do
		ticks=$((ticks + $(awk '{print $14 + $15}' /proc/$pid/stat 2>/dev/null || echo 0)))
	done
	echo "$rss $ticks"
}
sleep 20 # settle
read -r _ cpu0 < <(sample)
sleep 30
read -r rss cpu1 < <(sample)
echo "processes: $(tree $gorun | wc -w)"
echo "idle CPU: $(echo "scale=3; ($cpu1 - $cpu0) / $(getconf CLK_TCK) / 30" | bc) cores (30 s average)"
echo "RSS: $((rss / 1024)) MiB (sum over all processes)"
