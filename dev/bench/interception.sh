#!/usr/bin/env bash
# interception.sh: what transparent interception costs. Two "pods" (network namespaces joined by a veth
# pair), a client pod running wrk and dev/bench/load and a server pod running dev/bench/upstream, set up
# twice side by side:
#   direct   no rules, no proxies: the client reaches the server's app as it is
#   meshed   proxy init in both pods and a proxy in each, as uid 2102 without --inbound-forward: every
#            request goes client -> client's proxy (outbound, redirected) -> server's proxy (inbound,
#            redirected) -> app, each proxy finding the next hop with SO_ORIGINAL_DST
#   explicit the same two proxies on the same path without iptables: the client calls its proxy's
#            --outbound-route, which dials the server proxy's inbound port, which --inbound-forwards to
#            the app; the difference to meshed is what the redirect itself costs
# The client dials the server's address and app port directly in direct and meshed. Measured in turns:
#   throughput, HTTP/1.1 keep-alive (wrk, WRK_CONNS connections, DURATION seconds)
#   a fixed rate (dev/bench/load, open loop, RATE req/s for DURATION seconds): p50, p99, errors
# and printed as one table with the ratio meshed/direct. Needs root, iproute2, iptables and wrk
# (Debian: apt-get install iproute2 iptables wrk). Uses only the addresses 10.250.20.0/24 to
# 10.250.22.0/24, inside the namespaces it creates and deletes.
set -euo pipefail

DURATION=${DURATION:-10}
RATE=${RATE:-1000}
WRK_CONNS=${WRK_CONNS:-16}
ROUNDS=${ROUNDS:-2}

die() { echo "interception.sh: $*" >&2; exit 1; }
log() { echo "interception.sh: $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces and iptables)"
for tool in go ip wrk iptables-nft-restore; do
	command -v "$tool" >/dev/null || die "missing $tool (Debian: apt-get install iproute2 iptables wrk)"
done

cd "$(dirname "$0")/../.."
tmp=$(mktemp -d /tmp/meshscope-interception.XXXXXX)
chmod 755 "$tmp" # the proxies run as uid 2102
pids=()
nss=()
cleanup() {
	local p n
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	for n in "${nss[@]}"; do ip netns del "$n" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building"
go build -o "$tmp/bin/" ./proxy ./dev/bench/upstream ./dev/bench/load
chmod -R a+rx "$tmp/bin"

# pair NAME NET: namespaces NAME-c (10.250.NET.1) and NAME-s (10.250.NET.2) joined by a veth pair.
pair() {
	local n
	for n in "$1-c" "$1-s"; do
		ip netns del "$n" 2>/dev/null || true
		ip netns add "$n"
		nss+=("$n")
		ip -n "$n" link set lo up
	done
	ip link add "v-$1-c" netns "$1-c" type veth peer name "v-$1-s" netns "$1-s"
	ip -n "$1-c" addr add "10.250.$2.1/24" dev "v-$1-c"
	ip -n "$1-s" addr add "10.250.$2.2/24" dev "v-$1-s"
	ip -n "$1-c" link set "v-$1-c" up
	ip -n "$1-s" link set "v-$1-s" up
	ip netns exec "$1-s" "$tmp/bin/upstream" --listen 0.0.0.0:8080 &
	pids+=($!)
}

# mesh NAME: proxy init and a proxy (uid 2102) in both pods of NAME.
mesh() {
	local n
	for n in "$1-c" "$1-s"; do
		"$tmp/bin/proxy" init --netns "/var/run/netns/$n" >/dev/null
		ip netns exec "$n" setpriv --reuid 2102 --regid 2102 --clear-groups \
			"$tmp/bin/proxy" --admin-listen 0.0.0.0:4191 --namespace bench --deployment "$n" --pod "$n-0" \
			--log-level warn 2>"$tmp/proxy-$n.log" &
		pids+=($!)
	done
}

# ready NS URL: wait until URL answers from inside NS.
ready() {
	for _ in $(seq 100); do
		ip netns exec "$1" "$tmp/bin/load" --url "$2" --rate 10 --duration 100ms --warmup 0s >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "$2 does not answer from $1"
}

# explicit NAME: a proxy in each pod of NAME, started as in the proxy's own README example, no rules.
explicit() {
	ip netns exec "$1-s" "$tmp/bin/proxy" --inbound-forward 127.0.0.1:8080 --admin-listen 0.0.0.0:4191 \
		--namespace bench --deployment "$1-s" --pod "$1-s-0" --log-level warn 2>"$tmp/proxy-$1-s.log" &
	pids+=($!)
	ip netns exec "$1-c" "$tmp/bin/proxy" --inbound-listen= --outbound-route "127.0.0.1:4150=10.250.$2.2:4143" \
		--admin-listen 0.0.0.0:4191 --namespace bench --deployment "$1-c" --pod "$1-c-0" --log-level warn 2>"$tmp/proxy-$1-c.log" &
	pids+=($!)
}

pair direct 20
pair meshed 21
pair explicit 22
mesh meshed
explicit explicit 22
ready meshed-c http://127.0.0.1:4191/ready # the client's proxy
ready meshed-s http://127.0.0.1:4191/ready
ready direct-c http://10.250.20.2:8080/
ready meshed-c http://10.250.21.2:8080/
ready explicit-c http://127.0.0.1:4150/

targets=(direct meshed explicit)
declare -A url=([direct]=http://10.250.20.2:8080/ [meshed]=http://10.250.21.2:8080/ [explicit]=http://127.0.0.1:4150/)
declare -A rps p50 p99 errs
for t in "${targets[@]}"; do rps[$t]="" p50[$t]="" p99[$t]="" errs[$t]=0; done

for round in $(seq "$ROUNDS"); do
	for t in "${targets[@]}"; do
		log "round $round: $t: wrk ${DURATION}s, $WRK_CONNS connections"
		out=$(ip netns exec "$t-c" wrk -t1 -c"$WRK_CONNS" -d"${DURATION}s" "${url[$t]}")
		r=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
		# "Socket errors: connect 0, read 0, write 0, timeout 3" and "Non-2xx or 3xx responses: 2"
		e=$(awk '/Socket errors:/ {gsub(",", ""); n+=$4+$6+$8+$10} /Non-2xx/ {n+=$NF} END {print n+0}' <<<"$out")
		((e == 0)) || log "round $round: $t: wrk: $(grep -E 'Socket errors|Non-2xx' <<<"$out" | tr '\n' ' ')"
		rps[$t]+="$r "
		errs[$t]=$((errs[$t] + e))
	done
	for t in "${targets[@]}"; do
		log "round $round: $t: $RATE req/s for ${DURATION}s"
		out=$(ip netns exec "$t-c" "$tmp/bin/load" --url "${url[$t]}" --rate "$RATE" --duration "${DURATION}s" --warmup 1s 2>"$tmp/load.err") || true
		[ ! -s "$tmp/load.err" ] || log "round $round: $t: load: $(cat "$tmp/load.err")"
		p50[$t]+="$(sed -E 's/.*p50_ms=([0-9.]+).*/\1/' <<<"$out") "
		p99[$t]+="$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$out") "
		errs[$t]=$((errs[$t] + $(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$out")))
	done
done

# The meshed pods' proxies counted what they carried: outbound on the client's, inbound on the server's.
counted() {
	ip netns exec "$1" bash -c 'exec 3<>/dev/tcp/127.0.0.1/4191; printf "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3; cat <&3' |
		awk -v d="$2" '$1 ~ /^request_total\{/ && index($1, "direction=\"" d "\"") && index($1, "target_addr=\"10.250.21.2:8080\"") {s+=$2} END {printf "%.0f", s}'
}

echo
echo "interception.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $ROUNDS rounds"
printf '| | direct | meshed (both proxies, redirected) | explicit (both proxies, no iptables) | meshed/direct | meshed/explicit |\n|---|---|---|---|---|---|\n'
mean() { awk '{s=0; for (i=1; i<=NF; i++) s+=$i; printf "%.3f", s/NF}' <<<"$1"; }
ratio() { awk -v a="$(mean "$1")" -v b="$(mean "$2")" 'BEGIN {printf "%.2fx", b / a}'; }
delta() { awk -v a="$(mean "$1")" -v b="$(mean "$2")" 'BEGIN {printf "%+.2f ms", b - a}'; }
# row NAME ARRAY COMPARE: the values of each target and meshed compared with direct and with explicit.
row() {
	local -n v=$2
	printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "${v[direct]% }" "${v[meshed]% }" "${v[explicit]% }" \
		"$($3 "${v[direct]}" "${v[meshed]}")" "$($3 "${v[explicit]}" "${v[meshed]}")"
}
row "HTTP/1.1 req/s (wrk -c$WRK_CONNS, each round)" rps ratio
row "p50 ms at $RATE req/s (each round)" p50 delta
row "p99 ms at $RATE req/s (each round)" p99 delta
printf '| errors (all runs) | %s | %s | %s | | |\n' "${errs[direct]}" "${errs[meshed]}" "${errs[explicit]}"
printf '| requests the meshed proxies counted, client (outbound) / server (inbound) | | %s / %s | | | |\n' "$(counted meshed-c outbound)" "$(counted meshed-s inbound)"
