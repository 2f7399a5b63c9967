package proxy

import (
	"net/http"
	"net/textproto"
	"strings"
)

// isHopByHop reports the hop-by-hop headers of RFC 9110 §7.6.1 plus the
// legacy ones (RFC 2616 §13.5.1, Proxy-Connection) that proxies still
// strip. Keys are canonical, as net/http's parsers produce them.
func isHopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// connectionListed returns the canonical names of the headers a Connection
// header lists (to be removed too), or nil in the common case that it lists
// none beyond close/keep-alive/upgrade.
func connectionListed(values []string) []string {
	var out []string
	for _, v := range values {
		for f := range strings.SplitSeq(v, ",") {
			f = textproto.TrimString(f)
			if f == "" || strings.EqualFold(f, "close") || strings.EqualFold(f, "keep-alive") || strings.EqualFold(f, "upgrade") {
				continue
			}
			out = append(out, textproto.CanonicalMIMEHeaderKey(f))
		}
	}
	return out
}

func listed(names []string, k string) bool {
	for _, n := range names {
		if n == k {
			return true
		}
	}
	return false
}

// hasToken reports whether a comma-separated header contains token
// (case-insensitive).
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(f), token) {
				return true
			}
		}
	}
	return false
}

// isWebSocketUpgrade reports a GET asking to switch to WebSocket. Other
// Upgrade requests (h2c, …) are forwarded as plain HTTP with the upgrade
// headers stripped: RFC 9110 §7.8 lets a server ignore Upgrade.
func isWebSocketUpgrade(r *http.Request) bool {
	up := r.Header["Upgrade"]
	if len(up) == 0 {
		return false
	}
	return r.Method == http.MethodGet && hasToken(r.Header["Connection"], "upgrade") && hasToken(up, "websocket")
}

// validHost is net/http's lenient Host check: only bytes that can occur in
// a host, an IPv6 literal or a port.
func validHost(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!$%&'()*+,-.:;=[]_~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// idempotent reports requests that may be retried on a stale keep-alive
// connection (RFC 9110 §9.2.2), as net/http's transport does.
func idempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, k1 := r.Header["Idempotency-Key"]
	_, k2 := r.Header["X-Idempotency-Key"]
	return k1 || k2
}

// hostPort returns the port in a Host header value, or "".
func hostPort(host string) string {
	i := strings.LastIndexByte(host, ':')
	if i < 0 || strings.IndexByte(host[i:], ']') >= 0 {
		return ""
	}
	return host[i+1:]
}
