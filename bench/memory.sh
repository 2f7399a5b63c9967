#!/usr/bin/env bash
# bench/memory.sh — what held connections cost in memory: the Rollbridge
# proxy (bench/rbproxy) against nginx, side by side in one run, on loopback.
#
# For each proxy and each kind of connection, bench/holdconns opens N
# connections through it and holds them: idle keep-alive client connections
# (one GET /tiny served on each, then idle) and open WebSockets (handshake
# and one echoed frame on /ws; each also holds an upstream connection). The
# resident set of the proxy's processes (nginx: master and workers) is read
# before and while they are held; the difference per connection is printed
# with the ratio rollbridge / nginx, median of BENCH_REPEAT runs. For
# rollbridge it is also read after a forced GC that returns freed memory to
# the OS (rbproxy's admin POST /gc): Go keeps freed heap resident until its
# scavenger returns it, so "held" is close to the peak and "settled" is what
# the connections themselves keep.
#
# Everything binds 127.0.0.1 only; processes are killed by PID at the end.
# Environment: BENCH_CONNS (2000) BENCH_WS (1000) BENCH_REPEAT (3)
#   BENCH_PORT_BASE (18000)
set -euo pipefail

CONNS=${BENCH_CONNS:-2000}
WS=${BENCH_WS:-1000}
REPEAT=${BENCH_REPEAT:-3}
BASE=${BENCH_PORT_BASE:-18000}
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
need nginx nginx
need curl curl
ports_free "$UP_A" "$NGINX" "$RB" "$ADMIN"
ulimit -n 20000
build upstream rbproxy holdconns

start_upstream "$UP_A" a
wait_port "$UP_A"

# rss_kib PID…: resident KiB of the processes and their children.
rss_kib() { proc_sum status '/^VmRSS:/ {print $2}' "$@"; }

settle() { curl -sf -X POST "http://127.0.0.1:$ADMIN/gc" >/dev/null; sleep 0.2; }

# hold nginx|rollbridge N [-ws]: per-connection KiB while N connections are
# held (rollbridge: also after settle), measured on a fresh proxy process
# (both keep memory a previous round grew: nginx its connection pool).
hold() {
	local target=$1 n=$2 path=/tiny ws= kind=idle port pid
	[ "${3:-}" = -ws ] && path=/ws ws=-ws kind=ws
	local before after settled fifo="$TMP/hold.fifo" line=
	if [ "$target" = nginx ]; then
		start_nginx; port=$NGINX pid=$NGINX_PID
	else
		start_rbproxy -admin "127.0.0.1:$ADMIN"; port=$RB pid=$RB_PID
		wait_port "$ADMIN"
	fi
	wait_port "$port"
	sleep 0.5
	[ "$target" = rollbridge ] && settle
	before=$(rss_kib "$pid")
	rm -f "$fifo" "$TMP/hold.out"; mkfifo "$fifo"
	# holdconns holds until its stdin (the fifo) closes.
	"$TMP/holdconns" -addr "127.0.0.1:$port" -n "$n" -path "$path" $ws <"$fifo" >"$TMP/hold.out" 2>&1 &
	local hpid=$!
	exec 7>"$fifo"
	for _ in $(seq 600); do
		read -r line <"$TMP/hold.out" 2>/dev/null || true
		[[ $line == held* ]] && break
		kill -0 "$hpid" 2>/dev/null || { cat "$TMP/hold.out" >&2; echo "holdconns failed against $target" >&2; exit 1; }
		sleep 0.1
	done
	[[ $line == held* ]] || { echo "holdconns did not finish against $target" >&2; exit 1; }
	# 2 s: past the proxy's 1 s idle-buffer release, within its 5 s idle timeout.
	sleep 2
	after=$(rss_kib "$pid")
	settled=$after
	[ "$target" = rollbridge ] && settle && settled=$(rss_kib "$pid")
	exec 7>&-
	wait "$hpid" || true
	echo "$target-$kind $(awk -v a="$after" -v s="$settled" -v b="$before" -v n="$n" 'BEGIN {printf "%.2f %.2f", (a - b) / n, (s - b) / n}')" >>"$TMP/results"
	kill "$pid"
	wait "$pid" 2>/dev/null || true
}

: >"$TMP/results"
for round in $(seq "$REPEAT"); do
	echo "round $round/$REPEAT" >&2
	hold nginx "$CONNS"
	hold rollbridge "$CONNS"
	hold nginx "$WS" -ws
	hold rollbridge "$WS" -ws
done


echo
echo "Resident memory added per held connection (KiB), median of $REPEAT runs; nginx counts master and workers."
echo "Each figure is taken on a fresh proxy process. Settled: after a forced GC that returns freed memory to the OS."
echo
echo "| connections | nginx KiB/conn | rollbridge held KiB/conn | ratio | rollbridge settled KiB/conn | ratio |"
echo "|---|---:|---:|---:|---:|---:|"
for kind in idle ws; do
	label="$CONNS idle keep-alive"
	[ $kind = ws ] && label="$WS WebSockets"
	n=$(col "nginx-$kind"); r=$(col "rollbridge-$kind"); rs=$(col "rollbridge-$kind" 3)
	awk -v l="$label" -v n="$n" -v r="$r" -v rs="$rs" 'BEGIN {
		printf "| %s | %.1f | %.1f | %s | %.1f | %s |\n", l, n, r, (n > 0) ? sprintf("%.2f", r / n) : "—", rs, (n > 0) ? sprintf("%.2f", rs / n) : "—" }'
done
echo
echo "per run (KiB/conn held, settled):" >&2
cat "$TMP/results" >&2
