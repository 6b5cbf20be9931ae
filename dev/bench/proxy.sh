#!/usr/bin/env bash
# dev/bench/proxy.sh: the Meshscope proxy's comparison benchmark, in one run, side by side.
#
# Targets, all in front of the same tiny upstream (dev/bench/upstream, HTTP/1.1 + h2c, 13-byte body):
#   direct     the upstream itself
#   meshscope  the Meshscope proxy's inbound listener (defaults: metrics on, info logs)
#   nginx      Debian's nginx as reverse proxy, one worker per CPU it may use, upstream keepalive, h2c on
#              its own port
#   httputil   a plain net/http/httputil.ReverseProxy (dev/bench/reverseproxy)
# Measures, with the same client for every target:
#   throughput, small responses: HTTP/1.1 keep-alive (wrk) and h2c (h2load)
#   a fixed rate (dev/bench/load, open loop): p50, p99, errors
#   CPU per request of the process under test (utime+stime from /proc/PID/stat / requests)
#   RSS of the process under test: idle, peak through the fixed-rate run, holding idle client connections
#
# Pinning (PIN, with taskset; every target faces the same arrangement):
#   client (default)  every client (wrk, h2load, dev/bench/load) on CPU 0; the servers (upstream and the
#                     proxy under test) free on all CPUs. A single-threaded client then cannot wander onto
#                     the core a server is busy on, and never gets more than one core itself.
#   split             clients on CPU 0, servers confined to CPU 1 (GOMAXPROCS=1, one nginx worker). Not the
#                     default: two server processes sharing one core measure mostly the cost of switching
#                     between them (nginx falls from about 0.6x direct to 0.2x here).
#   none              nothing pinned (a run here gave nginx issue #2's reference of about 0.6x and 0.85x).
#
# Loopback only. Takes about 2 minutes. Everything started is stopped on exit.
# Settings (environment): DURATION (s per throughput run, 5), RATE (req/s, 2000), RATE_DURATION (s, 8),
# IDLE_CONNS (1000), WRK_CONNS (50), H2_CLIENTS (10), H2_STREAMS (10 per client), PIN (client).
set -euo pipefail

DURATION=${DURATION:-5}
RATE=${RATE:-2000}
RATE_DURATION=${RATE_DURATION:-8}
IDLE_CONNS=${IDLE_CONNS:-1000}
WRK_CONNS=${WRK_CONNS:-50}
H2_CLIENTS=${H2_CLIENTS:-10}
H2_STREAMS=${H2_STREAMS:-10}
PIN=${PIN:-client}

die() { echo "proxy.sh: $*" >&2; exit 1; }
log() { echo "proxy.sh: $*" >&2; }

for tool in go wrk h2load nginx taskset curl ss; do
	command -v "$tool" >/dev/null || die "missing $tool (Debian: apt-get install wrk nghttp2-client nginx-light util-linux curl iproute2)"
done

cd "$(dirname "$0")/../.."
tmp=$(mktemp -d /tmp/meshscope-bench.XXXXXX)
chmod 755 "$tmp" # nginx's worker runs as nobody when started by root
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
client=() server=()
workers=$(nproc) # nginx workers: as many as the CPUs a server may use, like GOMAXPROCS
case $PIN in
client)
	client=(taskset -c 0)
	pinning="clients pinned to CPU 0, servers on any CPU"
	;;
split)
	(($(nproc) >= 2)) || die "PIN=split needs 2 CPUs"
	client=(taskset -c 0) server=(taskset -c 1) workers=1
	pinning="clients pinned to CPU 0, servers to CPU 1"
	;;
none) pinning="nothing pinned" ;;
*) die "PIN=$PIN: want client, split or none" ;;
esac

log "building"
go build -o "$tmp/bin/" ./proxy ./dev/bench/upstream ./dev/bench/reverseproxy ./dev/bench/load

source dev/bench/ports.sh

# start NAME COMMAND...: runs a server in the background (pinned as PIN says); its PID is in pid[NAME].
declare -A pid port
start() {
	local name=$1
	shift
	"${server[@]}" "$@" >"$tmp/$name.log" 2>&1 &
	pid[$name]=$!
	pids+=($!)
}

port[upstream]=$(free_port)
port[meshscope]=$(free_port)
port[nginx]=$(free_port)
port[nginx_h2]=$(free_port)
port[httputil]=$(free_port)
admin=$(free_port)

start upstream "$tmp/bin/upstream" --listen "127.0.0.1:${port[upstream]}"
wait_port "${port[upstream]}" upstream
port[direct]=${port[upstream]}
pid[direct]=${pid[upstream]}

start meshscope "$tmp/bin/proxy" --inbound-listen "127.0.0.1:${port[meshscope]}" \
	--inbound-forward "127.0.0.1:${port[upstream]}" --outbound-listen "127.0.0.1:$(free_port)" \
	--admin-listen "127.0.0.1:$admin" --namespace bench --deployment upstream --pod upstream-0

mkdir -p "$tmp/nginx/logs"
cat >"$tmp/nginx.conf" <<EOF
# nginx 1.22 (Debian 12) predates the "http2 on;" directive (1.25.1): h2c is "listen ... http2",
# on a port of its own since such a plain-text listener speaks only HTTP/2 (prior knowledge).
worker_processes $workers;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log warn;
events { worker_connections 8192; }
http {
	access_log off;
	client_body_temp_path $tmp/nginx/body;
	proxy_temp_path $tmp/nginx/proxy;
	fastcgi_temp_path $tmp/nginx/fastcgi;
	uwsgi_temp_path $tmp/nginx/uwsgi;
	scgi_temp_path $tmp/nginx/scgi;
	keepalive_requests 1000000;
	http2_max_requests 1000000;
	upstream app {
		server 127.0.0.1:${port[upstream]};
		keepalive 256;
	}
	server {
		listen 127.0.0.1:${port[nginx]};
		listen 127.0.0.1:${port[nginx_h2]} http2;
		location / {
			proxy_pass http://app;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
		}
	}
}
EOF
start nginx nginx -p "$tmp/nginx" -e "$tmp/nginx/logs/error.log" -c "$tmp/nginx.conf"
start httputil "$tmp/bin/reverseproxy" --listen "127.0.0.1:${port[httputil]}" --upstream "127.0.0.1:${port[upstream]}"

wait_port "${port[meshscope]}" meshscope
wait_port "${port[nginx]}" nginx
wait_port "${port[nginx_h2]}" nginx
wait_port "${port[httputil]}" httputil

targets=(direct meshscope nginx httputil)
url() { echo "http://127.0.0.1:${port[$1]}/"; }
h2url() {
	if [[ $1 == nginx ]]; then echo "http://127.0.0.1:${port[nginx_h2]}/"; else url "$1"; fi
}

# Every target answers both protocols before anything is measured.
for t in "${targets[@]}"; do
	curl -fsS --max-time 5 -o /dev/null "$(url "$t")" || die "$t does not answer HTTP/1.1 on $(url "$t") (log: $tmp/$t.log)"
	curl -fsS --max-time 5 --http2-prior-knowledge -o /dev/null "$(h2url "$t")" ||
		die "$t does not answer h2c on $(h2url "$t") (log: $tmp/$t.log)"
done

# procs NAME: the PIDs whose resources count for a target: nginx's master and worker, else the one process.
procs() {
	echo "${pid[$1]}"
	if [[ $1 == nginx ]]; then pgrep -P "${pid[nginx]}" || true; fi
}
cpu_ticks() { # NAME: utime+stime of its processes, in clock ticks
	local total=0 p f
	for p in $(procs "$1"); do
		read -ra f <"/proc/$p/stat"
		# Fields after the command (which may hold spaces) start at index 2 when it has none; ours do not.
		total=$((total + f[13] + f[14]))
	done
	echo "$total"
}
rss_kib() { # NAME FIELD(VmRSS|VmHWM): summed over its processes
	local total=0 p v
	for p in $(procs "$1"); do
		v=$(awk -v k="$2:" '$1 == k { print $2 }' "/proc/$p/status")
		total=$((total + v))
	done
	echo "$total"
}
tck=$(getconf CLK_TCK)
us_per_req() { awk -v t="$1" -v n="$2" -v hz="$tck" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "-" }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

declare -A r # results: r[metric,target]
sleep 1
for t in "${targets[@]}"; do r[rss_idle,$t]=$(mib "$(rss_kib "$t" VmRSS)"); done

# Fixed rate first, so that the peak RSS (VmHWM) afterwards is that of this load, not of saturation.
for t in "${targets[@]}"; do
	log "fixed rate $RATE req/s, ${RATE_DURATION}s: $t"
	before=$(cpu_ticks "$t")
	out=$("${client[@]}" "$tmp/bin/load" --url "$(url "$t")" --rate "$RATE" --duration "${RATE_DURATION}s" --warmup 1s 2>"$tmp/load-$t.err") ||
		die "load against $t failed: $(cat "$tmp/load-$t.err")"
	after=$(cpu_ticks "$t")
	declare -A kv=()
	for pair in $out; do kv[${pair%%=*}]=${pair#*=}; done
	r[p50,$t]=${kv[p50_ms]} r[p99,$t]=${kv[p99_ms]} r[errors,$t]=${kv[errors]} r[rate,$t]=${kv[rps]}
	# The CPU ticks include the 1s warm-up: count its requests too.
	r[cpu_rate,$t]=$(us_per_req $((after - before)) $((${kv[requests]} + RATE)))
	r[rss_load,$t]=$(mib "$(rss_kib "$t" VmHWM)")
done

for t in "${targets[@]}"; do
	log "HTTP/1.1 throughput (wrk -c$WRK_CONNS, ${DURATION}s): $t"
	"${client[@]}" wrk -t1 -c"$WRK_CONNS" -d1s "$(url "$t")" >/dev/null # warm-up
	before=$(cpu_ticks "$t")
	out=$("${client[@]}" wrk -t1 -c"$WRK_CONNS" -d"${DURATION}s" "$(url "$t")")
	after=$(cpu_ticks "$t")
	r[h1,$t]=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
	n=$(awk '/requests in/ { print $1 }' <<<"$out")
	r[h1_errors,$t]=$(awk '/Non-2xx/ { s += $NF } /Socket errors/ { gsub(",", ""); s += $4 + $6 + $8 + $10 } END { print s + 0 }' <<<"$out")
	r[cpu_sat,$t]=$(us_per_req $((after - before)) "$n")

	log "h2c throughput (h2load -c$H2_CLIENTS -m$H2_STREAMS, ${DURATION}s): $t"
	out=$("${client[@]}" h2load -t1 -c"$H2_CLIENTS" -m"$H2_STREAMS" --warm-up-time=1 -D"$DURATION" "$(h2url "$t")")
	r[h2,$t]=$(awk '/^finished in/ { gsub(",", "", $4); printf "%.0f", $4 }' <<<"$out")
	r[h2_errors,$t]=$(awk '/^requests:/ { print $10 + $12 }' <<<"$out")
done

for t in "${targets[@]}"; do
	log "holding $IDLE_CONNS idle connections: $t"
	"${client[@]}" "$tmp/bin/load" --url "$(url "$t")" --idle "$IDLE_CONNS" --hold 60s >"$tmp/idle-$t.out" 2>&1 &
	holder=$!
	pids+=("$holder")
	for _ in $(seq 300); do
		grep -q '^ready' "$tmp/idle-$t.out" && break
		kill -0 "$holder" 2>/dev/null || die "holding connections to $t failed: $(cat "$tmp/idle-$t.out")"
		sleep 0.1
	done
	grep -q '^ready' "$tmp/idle-$t.out" || die "holding connections to $t: not ready within 30s"
	sleep 0.5
	r[rss_idle_conns,$t]=$(mib "$(rss_kib "$t" VmRSS)")
	kill "$holder"
	wait "$holder" 2>/dev/null || true
done

counted=$(curl -fsS --max-time 5 "http://127.0.0.1:$admin/metrics" |
	awk '/^request_total\{/ && /direction="inbound"/ { s += $NF } END { printf "%.0f", s }')

# ---- the table ----
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2fx", a / b; else print "-" }'; }
delta() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/) printf "%+.3f ms", a - b; else print "-" }'; }
row() { # label metric kind(ratio|delta|proxyratio|none) target-note
	local label=$1 m=$2 kind=$3 note=$4 a="" b="" c=""
	case $kind in
	ratio)
		a=$(ratio "${r[$m,meshscope]}" "${r[$m,direct]}") b=$(ratio "${r[$m,meshscope]}" "${r[$m,httputil]}")
		c=$(ratio "${r[$m,nginx]}" "${r[$m,direct]}")
		;;
	delta)
		a=$(delta "${r[$m,meshscope]}" "${r[$m,direct]}") b=$(delta "${r[$m,meshscope]}" "${r[$m,httputil]}")
		c=$(delta "${r[$m,nginx]}" "${r[$m,direct]}")
		;;
	proxyratio)
		b=$(ratio "${r[$m,meshscope]}" "${r[$m,httputil]}")
		;;
	esac
	printf "%-34s %10s %10s %10s %10s | %13s %14s %12s | %s\n" "$label" "${r[$m,direct]}" "${r[$m,meshscope]}" \
		"${r[$m,nginx]}" "${r[$m,httputil]}" "$a" "$b" "$c" "$note"
}

echo
echo "Meshscope proxy benchmark: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), loopback, $pinning"
echo "body 13 bytes; HTTP/1.1: wrk -t1 -c$WRK_CONNS ${DURATION}s; h2c: h2load -t1 -c$H2_CLIENTS -m$H2_STREAMS ${DURATION}s; fixed rate: dev/bench/load $RATE req/s ${RATE_DURATION}s over 32 conns"
printf "%-34s %10s %10s %10s %10s | %13s %14s %12s | %s\n" "" direct meshscope nginx httputil proxy/direct proxy/httputil nginx/direct "issue #2 target"
row "HTTP/1.1 req/s" h1 ratio "proxy >= 0.45x direct, >= 1.5x httputil"
row "HTTP/1.1 errors" h1_errors none ""
row "h2c req/s" h2 ratio "proxy >= 0.6x direct, >= 1.5x httputil"
row "h2c errors (failed+errored)" h2_errors none ""
row "$RATE req/s achieved" rate none ""
row "$RATE req/s p50 ms" p50 delta "proxy <= direct + 0.2 ms"
row "$RATE req/s p99 ms" p99 delta "proxy <= direct + 1 ms"
row "$RATE req/s errors" errors none "0"
row "CPU us/req at $RATE req/s" cpu_rate proxyratio "proxy <= 50 us"
row "CPU us/req at HTTP/1.1 saturation" cpu_sat proxyratio ""
row "RSS MiB idle" rss_idle proxyratio "proxy <= 20 MiB"
row "RSS MiB peak through $RATE req/s" rss_load proxyratio "proxy <= 40 MiB"
row "RSS MiB holding $IDLE_CONNS idle conns" rss_idle_conns proxyratio "proxy <= 64 MiB"
echo "direct column: CPU and RSS of the upstream itself; nginx: master + worker. The meshscope proxy counted $counted inbound requests (metrics on)."
