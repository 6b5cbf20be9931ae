# dev/bench/ports.sh: port helpers for the benchmark scripts, which source it from the repository root
# after defining die (print an error and exit) and tmp (their scratch directory, holding NAME.log files).

# free_port prints a TCP port nothing on this machine listens on (nor was handed out by this shell).
used=" "
free_port() {
	local p
	for _ in $(seq 100); do
		p=$((20000 + RANDOM % 30000))
		if [[ $used != *" $p "* ]] && ! ss -Htln "sport = :$p" | grep -q .; then
			used+="$p "
			echo "$p"
			return
		fi
	done
	die "no free port found"
}

# wait_port PORT NAME waits up to 10 s for something to listen on 127.0.0.1:PORT.
wait_port() {
	for _ in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
		sleep 0.1
	done
	die "$2 did not listen on 127.0.0.1:$1 within 10s (log: $tmp/$2.log)"
}
