# Shared helpers for the scripts in scripts/. Source, do not execute.
# shellcheck shell=bash

ROLLBRIDGE_GO_VERSION=${ROLLBRIDGE_GO_VERSION:-1.26.8}
# Where ensure_go installs Go when none (or an old one) is found.
ROLLBRIDGE_GO_ROOT=${ROLLBRIDGE_GO_ROOT:-/usr/local/go}

log() { printf '==> %s\n' "$*" >&2; }

# apt_install PKG… installs missing Debian packages (needs root).
apt_install() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		log "missing packages: ${missing[*]} (run as root, or install them yourself)"
		return 1
	fi
	log "apt-get install ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || true
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

go_ok() {
	local v
	v=$(go env GOVERSION 2>/dev/null) || return 1
	v=${v#go}
	# Need Go >= 1.26.
	[ "$(printf '%s\n1.26\n' "$v" | sort -V | head -n1)" = "1.26" ]
}

# ensure_go puts a Go >= 1.26 toolchain on PATH. On a fresh Debian machine it
# fetches the official toolchain from the Go module proxy (the only Go source
# such machines can reach) into $ROLLBRIDGE_GO_ROOT.
ensure_go() {
	export PATH="$ROLLBRIDGE_GO_ROOT/bin:$PATH"
	if command -v go >/dev/null 2>&1 && go_ok; then
		return 0
	fi
	apt_install ca-certificates curl unzip
	local arch proxy url tmp
	case "$(uname -m)" in
	x86_64) arch=amd64 ;;
	aarch64) arch=arm64 ;;
	*) log "unsupported architecture $(uname -m)"; return 1 ;;
	esac
	proxy=${GOPROXY:-https://proxy.golang.org}
	proxy=${proxy%%,*}
	url="$proxy/golang.org/toolchain/@v/v0.0.1-go${ROLLBRIDGE_GO_VERSION}.linux-${arch}.zip"
	tmp=$(mktemp -d)
	log "installing Go ${ROLLBRIDGE_GO_VERSION} from $url"
	curl -fsSL -o "$tmp/go.zip" "$url"
	unzip -q "$tmp/go.zip" -d "$tmp"
	rm -rf "$ROLLBRIDGE_GO_ROOT"
	mkdir -p "$(dirname "$ROLLBRIDGE_GO_ROOT")"
	mv "$tmp/golang.org/toolchain@v0.0.1-go${ROLLBRIDGE_GO_VERSION}.linux-${arch}" "$ROLLBRIDGE_GO_ROOT"
	rm -rf "$tmp"
	# Module zips do not keep file modes.
	chmod +x "$ROLLBRIDGE_GO_ROOT"/bin/* "$ROLLBRIDGE_GO_ROOT"/pkg/tool/*/*
	go version
}
