package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMetricsAcrossDeploy scrapes the Prometheus endpoint before and after a
// deploy with traffic: deploy, request and start counters move.
func TestMetricsAcrossDeploy(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnvOpts(t, runner, `[
    {id: "worker", command: "exec sleep 100000"},
    {id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}, health: {intervalMs: 50}}]`, envOpts{noStart: true})
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		e.extraEnv = append(e.extraEnv, "ROLLBRIDGE_METRICS_LISTEN="+addr)
		e.startDaemon()
		scrape := func() string {
			code, body, err := get("http://" + addr + "/metrics")
			if err != nil || code != 200 {
				t.Fatalf("scrape: %d %v", code, err)
			}
			return body
		}
		e.deploy("v1")
		for range 20 {
			get(e.proxyURL("/"))
		}
		// An exchange is counted when it ends, just after the client got
		// its response: wait for the last one.
		settled := func(metric string, want float64) string {
			var body string
			e.waitFor(metric+" to reach its value", 5*time.Second, func() bool {
				body = scrape()
				v, ok := sample(body, metric)
				return ok && v >= want
			})
			return body
		}
		before := settled(`rollbridge_proxy_requests_total{class="2xx",release="v1"}`, 20)
		e.deploy("v2")
		for range 30 {
			get(e.proxyURL("/"))
		}
		after := settled(`rollbridge_proxy_requests_total{class="2xx",release="v2"}`, 30)
		checks := []struct {
			metric      string
			wantBefore  float64
			wantAtLeast float64
		}{
			{`rollbridge_deploys_total{outcome="success"}`, 1, 2},
			// v1's series ends once the retired release is forgotten.
			{`rollbridge_proxy_requests_total{class="2xx",release="v1"}`, 20, -1},
			{`rollbridge_proxy_requests_total{class="2xx",release="v2"}`, -1, 30},
			{`rollbridge_process_starts_total{process="web",reason="deploy"}`, 1, 2},
			{`rollbridge_release_active{release="v2"}`, -1, 1},
			{`rollbridge_deploy_duration_seconds_count`, 1, 2},
		}
		for _, c := range checks {
			if c.wantBefore >= 0 {
				if v, ok := sample(before, c.metric); !ok || v != c.wantBefore {
					t.Errorf("before: %s = %v (found %v), want %v", c.metric, v, ok, c.wantBefore)
				}
			}
			if c.wantAtLeast < 0 {
				continue
			}
			if v, ok := sample(after, c.metric); !ok || v < c.wantAtLeast {
				t.Errorf("after: %s = %v (found %v), want ≥ %v", c.metric, v, ok, c.wantAtLeast)
			}
		}
		if !regexp.MustCompile(`rollbridge_process_up\{process="worker",release="v2",state="running"\} 1`).MatchString(after) {
			t.Errorf("worker of v2 not reported up:\n%s", grepLines(after, "rollbridge_process_up"))
		}
	})
}

// sample finds one sample's value in a Prometheus text exposition.
func sample(body, metric string) (float64, bool) {
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, metric+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

func grepLines(body, prefix string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
