# bench/lib.sh — what bench/proxy.sh and bench/memory.sh share: tools,
# a temp dir and PIDs cleaned up on exit, the upstream, nginx and rbproxy.
# Source it after setting BASE (the port base); it defines the ports
# UP_A UP_B NGINX RB ADMIN and ROOT, TMP, PIDS.

UP_A=$((BASE + 1)) UP_B=$((BASE + 2)) NGINX=$((BASE + 90)) RB=$((BASE + 80)) ADMIN=$((BASE + 85))
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

need() {
	command -v "$1" >/dev/null 2>&1 && return
	echo "installing $2 (apt-get)" >&2
	apt-get install -y "$2" >/dev/null
}

TMP=$(mktemp -d /tmp/rollbridge-bench.XXXXXX)
PIDS=()
cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$TMP"
}
trap cleanup EXIT

ports_free() {
	local port
	for port in "$@"; do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "port $port is in use; set BENCH_PORT_BASE" >&2
			exit 1
		fi
	done
}

# build PKG…: go build ./bench/PKG into $TMP.
build() {
	local pkgs=() p
	for p in "$@"; do pkgs+=("./bench/$p"); done
	echo "building ${pkgs[*]}" >&2
	(cd "$ROOT" && CGO_ENABLED=0 go build -o "$TMP/" "${pkgs[@]}")
}

wait_port() {
	for _ in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.05
	done
	echo "nothing listens on 127.0.0.1:$1" >&2
	exit 1
}

# start_upstream PORT NAME: sets UP_PID.
start_upstream() {
	"$TMP/upstream" -addr "127.0.0.1:$1" -name "$2" >/dev/null &
	UP_PID=$!
	PIDS+=("$UP_PID")
}

# start_nginx: nginx as a reverse proxy to UP_A with upstream keepalive, no
# access log unless BENCH_NGINX_ACCESS_LOG=1, WebSockets upgraded on /ws.
# Sets NGINX_PID.
start_nginx() {
	mkdir -p "$TMP/nginx"
	local access_log="access_log off;"
	[ "${BENCH_NGINX_ACCESS_LOG:-0}" = 1 ] && access_log="access_log $TMP/nginx/access.log;"
	cat >"$TMP/nginx/nginx.conf" <<NGINX
worker_processes auto;
worker_rlimit_nofile 20000;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log;
events { worker_connections 8192; }
http {
	$access_log
	client_body_temp_path $TMP/nginx/body;
	proxy_temp_path $TMP/nginx/proxy;
	fastcgi_temp_path $TMP/nginx/fastcgi;
	uwsgi_temp_path $TMP/nginx/uwsgi;
	scgi_temp_path $TMP/nginx/scgi;
	upstream app { server 127.0.0.1:$UP_A; keepalive 128; }
	server {
		listen 127.0.0.1:$NGINX;
		location / {
			proxy_pass http://app;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header Host \$host;
			proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
		}
		location /ws {
			proxy_pass http://app;
			proxy_http_version 1.1;
			proxy_set_header Upgrade \$http_upgrade;
			proxy_set_header Connection "upgrade";
			proxy_set_header Host \$host;
			proxy_read_timeout 1h;
		}
	}
}
NGINX
	nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" &
	NGINX_PID=$!
	PIDS+=("$NGINX_PID")
}

# start_rbproxy ARGS…: bench/rbproxy on RB routing to UP_A. Sets RB_PID.
start_rbproxy() {
	"$TMP/rbproxy" -listen "127.0.0.1:$RB" -a "127.0.0.1:$UP_A" "$@" >/dev/null &
	RB_PID=$!
	PIDS+=("$RB_PID")
}

# proc_sum FILE AWK PID…: the sum of what AWK prints from /proc/<task>/FILE
# over the processes and their children.
proc_sum() {
	local file=$1 prog=$2 sum=0 pid task
	shift 2
	for pid in "$@"; do
		for task in $(pgrep -P "$pid" 2>/dev/null) "$pid"; do
			[ -r "/proc/$task/$file" ] && sum=$((sum + $(awk "$prog" "/proc/$task/$file")))
		done
	done
	echo "$sum"
}

# median: the median of the numbers on stdin.
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# col NAME [COLUMN]: the median of COLUMN (default 2) over the rows of
# $TMP/results whose first field is NAME.
col() { awk -v n="$1" -v c="${2:-2}" '$1 == n {print $c}' "$TMP/results" | median; }
