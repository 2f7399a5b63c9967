#!/usr/bin/env bash
# bench/replicas.sh — throughput of a CPU-bound proxied process behind 1 vs 2
# proxied replicas (issue 9), through the real daemon and proxy.
#
# The fixture is the demo app with --cpu-ms (default 2 ms of CPU per
# request, measured on the thread's own CPU clock) and GOMAXPROCS=1, so one
# replica uses one core at most, like a Node.js web server. For each replica
# count the script writes a config, starts `rollbridge daemon`, deploys the
# fixture, warms up, runs wrk against the proxy port, and shuts the daemon
# down. It prints req/s of each run (median of BENCH_REPEAT) and the ratio.
#
# Everything binds 127.0.0.1 only; the daemons are stopped by `rollbridge
# shutdown` and, failing that, killed by PID.
# Environment:
#   BENCH_DURATION (10s) BENCH_CONNS (16) BENCH_THREADS (1) BENCH_CPU_MS (2)
#   BENCH_REPEAT (3) BENCH_RUNNER (exec; or systemd) BENCH_PORT (18480)
set -euo pipefail

DURATION=${BENCH_DURATION:-10s}
CONNS=${BENCH_CONNS:-16}
THREADS=${BENCH_THREADS:-1}
CPU_MS=${BENCH_CPU_MS:-2}
REPEAT=${BENCH_REPEAT:-3}
RUNNER=${BENCH_RUNNER:-exec}
PORT=${BENCH_PORT:-18480}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

command -v wrk >/dev/null 2>&1 || { echo "installing wrk (apt-get)" >&2; apt-get install -y wrk >/dev/null; }
command -v curl >/dev/null 2>&1 || { echo "installing curl (apt-get)" >&2; apt-get install -y curl >/dev/null; }

TMP=$(mktemp -d /tmp/rollbridge-bench-replicas.XXXXXX)
DAEMON_PID=
cleanup() {
	if [ -n "$DAEMON_PID" ]; then
		"$TMP/rollbridge" shutdown -c "$TMP/rollbridge.js" >/dev/null 2>&1 || kill "$DAEMON_PID" 2>/dev/null || true
		wait "$DAEMON_PID" 2>/dev/null || true
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
	echo "port $PORT is in use; set BENCH_PORT" >&2
	exit 1
fi

echo "building rollbridge and the demo app" >&2
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$TMP/" ./cmd/rollbridge ./examples/demo-app)
mkdir -p "$TMP/release"
cp "$TMP/demo-app" "$TMP/release/"

# run_replicas N: prints the median req/s of REPEAT wrk runs with N replicas.
run_replicas() {
	local n=$1 app="rbbench$$r$1"
	cat >"$TMP/rollbridge.js" <<JS
export default {
  application: "$app",
  control: {path: "$TMP/ctl.sock"},
  proxy: {port: $PORT, drainTimeoutMs: 5000},
  processes: [{
    id: "web", policy: "proxied", replicas: $n,
    command: "exec ./demo-app --port {{port}} --cpu-ms $CPU_MS",
    env: {GOMAXPROCS: "1"},
    port: {from: 0, to: 0},
    health: {path: "/ping", intervalMs: 50}
  }]
}
JS
	ROLLBRIDGE_RUNNER=$RUNNER "$TMP/rollbridge" daemon -c "$TMP/rollbridge.js" >"$TMP/daemon-$n.log" 2>&1 &
	DAEMON_PID=$!
	for _ in $(seq 100); do
		"$TMP/rollbridge" status -c "$TMP/rollbridge.js" >/dev/null 2>&1 && break
		sleep 0.1
	done
	"$TMP/rollbridge" deploy -c "$TMP/rollbridge.js" --release-path "$TMP/release" --release-id "r$n" >/dev/null
	curl -sf "http://127.0.0.1:$PORT/" >/dev/null
	wrk -t"$THREADS" -c"$CONNS" -d3s "http://127.0.0.1:$PORT/" >/dev/null
	local rates=()
	for round in $(seq "$REPEAT"); do
		local out
		out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --timeout 10s "http://127.0.0.1:$PORT/")
		local rps errs
		rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
		errs=$(awk '/Socket errors|Non-2xx/ {e = 1} END {print e + 0}' <<<"$out")
		[ "$errs" = 0 ] || echo "replicas=$n round $round: wrk reported errors:"$'\n'"$out" >&2
		echo "replicas=$n round $round: $rps req/s" >&2
		rates+=("$rps")
	done
	"$TMP/rollbridge" shutdown -c "$TMP/rollbridge.js" >/dev/null
	wait "$DAEMON_PID" 2>/dev/null || true
	DAEMON_PID=
	printf '%s\n' "${rates[@]}" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}

one=$(run_replicas 1)
two=$(run_replicas 2)
echo
echo "CPU-bound fixture: demo-app --cpu-ms $CPU_MS with GOMAXPROCS=1 (one core per replica), $(nproc) CPUs shared"
echo "with the daemon's proxy and wrk (-t$THREADS -c$CONNS -d$DURATION, median of $REPEAT, $RUNNER runner)."
echo
echo "| proxied replicas | req/s |"
echo "|---:|---:|"
printf '| 1 | %.0f |\n| 2 | %.0f |\n' "$one" "$two"
awk -v a="$one" -v b="$two" 'BEGIN {printf "\nratio 2 vs 1 replicas: %.2fx (goal >= 1.6x)\n", b / a}'
