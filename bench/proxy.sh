#!/usr/bin/env bash
# bench/proxy.sh — Rollbridge proxy vs nginx vs direct, on loopback, in one run.
#
# Measures, with the same wrk load against (a) the upstream directly, (b) nginx
# as a reverse proxy with upstream keepalive, (c) package proxy (bench/rbproxy):
#   tiny   GET /tiny      c=50   (CPU-bound: the proxy's cost per request)
#   slow   GET /slow20ms  c=100  (a 20 ms upstream: the proxy's added latency)
# then a switch-under-load run: 20 s of load on rbproxy while the active
# release is switched between two upstreams 20 times (Switch + Drain, as the
# daemon does). Prints a Markdown table.
#
# Everything binds 127.0.0.1 only; processes are killed by PID at the end.
# Environment:
#   BENCH_DURATION (10s) BENCH_THREADS (2) BENCH_REPEAT (3: median of N runs,
#   interleaved) BENCH_SWITCH_DURATION (20) BENCH_SWITCHES (20)
#   BENCH_PORT_BASE (18000) BENCH_CPUPROFILE (file: CPU profile of rbproxy
#   over the whole run) BENCH_NGINX_ACCESS_LOG (0; 1 = log every request)
set -euo pipefail

DURATION=${BENCH_DURATION:-10s}
THREADS=${BENCH_THREADS:-2}
REPEAT=${BENCH_REPEAT:-3}
SWITCH_DURATION=${BENCH_SWITCH_DURATION:-20}
SWITCHES=${BENCH_SWITCHES:-20}
BASE=${BENCH_PORT_BASE:-18000}
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
need wrk wrk
need nginx nginx
need curl curl
ports_free "$UP_A" "$UP_B" "$NGINX" "$RB" "$ADMIN"
build upstream rbproxy

start_upstream "$UP_A" a
UPA_PID=$UP_PID
start_upstream "$UP_B" b
start_nginx
PROFILE_ARGS=()
[ -n "${BENCH_CPUPROFILE:-}" ] && PROFILE_ARGS=(-cpuprofile "$BENCH_CPUPROFILE")
start_rbproxy -b "127.0.0.1:$UP_B" -admin "127.0.0.1:$ADMIN" "${PROFILE_ARGS[@]}"

wait_port "$UP_A"; wait_port "$UP_B"; wait_port "$NGINX"; wait_port "$RB"; wait_port "$ADMIN"

# cpu_ticks PID... : user+system clock ticks of the processes and their children.
cpu_ticks() { proc_sum stat '{print $14+$15}' "$@"; }

# to_ms VALUE: wrk latency ("470.00us", "1.49ms", "1.02s") in milliseconds.
to_ms() {
	awk -v v="$1" 'BEGIN {
		if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
		else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
		else printf "%s", v }'
}

# run NAME URL CONNS PIDS...: one wrk run; appends "name rps p50 p99 errs cpu_us_per_req" to $TMP/results.
run() {
	local name=$1 url=$2 conns=$3; shift 3
	local t0 t1 out
	t0=$(cpu_ticks "$@")
	out=$(wrk -t"$THREADS" -c"$conns" -d"$DURATION" --timeout 10s --latency "$url")
	t1=$(cpu_ticks "$@")
	local rps p50 p99 reqs errs non2xx cpu
	rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
	p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
	p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
	reqs=$(awk '/requests in/ {print $1}' <<<"$out")
	errs=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' <<<"$out")
	non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
	cpu=$(awk -v t=$((t1 - t0)) -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz * 1e6 / r}')
	echo "$name $rps $p50 $p99 $(( ${errs:-0} + ${non2xx:-0} )) $cpu" >>"$TMP/results"
}

warm() { wrk -t"$THREADS" -c"$2" -d2s "$1" >/dev/null; }

echo "warming up" >&2
for port in $UP_A $NGINX $RB; do
	warm "http://127.0.0.1:$port/tiny" 50
	warm "http://127.0.0.1:$port/slow20ms" 100
done

: >"$TMP/results"
for round in $(seq "$REPEAT"); do
	echo "round $round/$REPEAT" >&2
	run direct-tiny "http://127.0.0.1:$UP_A/tiny" 50 "$UPA_PID"
	run nginx-tiny "http://127.0.0.1:$NGINX/tiny" 50 "$NGINX_PID"
	run rollbridge-tiny "http://127.0.0.1:$RB/tiny" 50 "$RB_PID"
	run direct-slow "http://127.0.0.1:$UP_A/slow20ms" 100 "$UPA_PID"
	run nginx-slow "http://127.0.0.1:$NGINX/slow20ms" 100 "$NGINX_PID"
	run rollbridge-slow "http://127.0.0.1:$RB/slow20ms" 100 "$RB_PID"
done


echo
echo "Loopback, $(nproc) CPUs shared by wrk, upstream and proxy; wrk -t$THREADS -d$DURATION; median of $REPEAT interleaved runs."
echo "cpu µs/req = user+system CPU of the server process(es) measured (upstream itself for direct) per request."
echo
echo "| scenario | target | req/s | ratio vs direct | p50 ms | p99 ms | added p99 ms | errors | cpu µs/req |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for s in tiny slow; do
	conns=50; label="tiny, c=50"
	[ $s = slow ] && conns=100 && label="20 ms upstream, c=100"
	d_rps=$(col "direct-$s" 2); d_p99=$(col "direct-$s" 4)
	for t in direct nginx rollbridge; do
		rps=$(col "$t-$s" 2); p50=$(col "$t-$s" 3); p99=$(col "$t-$s" 4)
		errs=$(col "$t-$s" 5); cpu=$(col "$t-$s" 6)
		awk -v l="$label" -v t="$t" -v r="$rps" -v dr="$d_rps" -v p50="$p50" -v p99="$p99" -v dp="$d_p99" -v e="$errs" -v c="$cpu" \
			'BEGIN {printf "| %s | %s | %.0f | %.2f | %.2f | %.2f | %+.2f | %d | %.1f |\n", l, t, r, r / dr, p50, p99, p99 - dp, e, c}'
	done
done

echo
echo "switch under load: ${SWITCH_DURATION}s of wrk -t$THREADS -c50 on /tiny, $SWITCHES switches between upstreams a and b" >&2
a0=$(curl -s "http://127.0.0.1:$UP_A/stats" | sed 's/.*"served":\([0-9]*\).*/\1/')
b0=$(curl -s "http://127.0.0.1:$UP_B/stats" | sed 's/.*"served":\([0-9]*\).*/\1/')
wrk -t"$THREADS" -c50 -d"${SWITCH_DURATION}s" --timeout 10s --latency "http://127.0.0.1:$RB/tiny" >"$TMP/switch.txt" &
WRK_PID=$!
interval=$(awk -v d="$SWITCH_DURATION" -v n="$SWITCHES" 'BEGIN {printf "%.3f", d / (n + 1)}')
switched=0
for _ in $(seq "$SWITCHES"); do
	sleep "$interval"
	curl -sf -X POST "http://127.0.0.1:$ADMIN/switch" >/dev/null && switched=$((switched + 1))
done
wait "$WRK_PID"
a1=$(curl -s "http://127.0.0.1:$UP_A/stats" | sed 's/.*"served":\([0-9]*\).*/\1/')
b1=$(curl -s "http://127.0.0.1:$UP_B/stats" | sed 's/.*"served":\([0-9]*\).*/\1/')
out=$(cat "$TMP/switch.txt")
reqs=$(awk '/requests in/ {print $1}' <<<"$out")
rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
errs=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' <<<"$out")
non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
echo "| switch under load | requests | req/s | p99 ms | switches | non-2xx | socket errors | served by a / b |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
printf '| %ss, c=50, /tiny | %s | %.0f | %.2f | %s | %s | %s | %s / %s |\n' "$SWITCH_DURATION" "$reqs" "$rps" "$p99" "$switched" "${non2xx:-0}" "${errs:-0}" $((a1 - a0)) $((b1 - b0))
if [ "${non2xx:-0}" != 0 ] || [ "${errs:-0}" != 0 ] || [ "$switched" != "$SWITCHES" ]; then
	echo "FAIL: the switch under load must serve every request (non-2xx ${non2xx:-0}, socket errors ${errs:-0}, switches $switched/$SWITCHES)" >&2
	exit 1
fi
