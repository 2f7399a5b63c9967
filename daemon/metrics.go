package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rollbridge/rollbridge/proxy"
	"github.com/rollbridge/rollbridge/release"
)

// metrics is the optional Prometheus endpoint (`daemon --metrics-listen`).
// Proxy and process figures are read at scrape time; deploys, restarts,
// health probes and proxy failures are counted from the event stream (so
// they restart at zero in a re-executed daemon, like any counter of a new
// process).
type metrics struct {
	d   *daemon
	reg *prometheus.Registry

	deploys        *prometheus.CounterVec
	deployDuration prometheus.Histogram
	starts         *prometheus.CounterVec
	healthProbes   *prometheus.CounterVec
	proxyErrors    prometheus.Counter
	proxyDrained   prometheus.Counter

	deployStart time.Time
}

func newMetrics(d *daemon) *metrics {
	m := &metrics{d: d, reg: prometheus.NewRegistry()}
	m.deploys = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rollbridge_deploys_total", Help: "Deploys and rollbacks by outcome (success, failure).",
	}, []string{"outcome"})
	m.deployDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "rollbridge_deploy_duration_seconds", Help: "Time from deploy start to traffic switch (successful deploys).",
		Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300},
	})
	m.starts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rollbridge_process_starts_total", Help: "Process starts by reason (deploy, crash, manual, memory).",
	}, []string{"process", "reason"})
	m.healthProbes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rollbridge_health_probes_total", Help: "Health probes during deploys by result (healthy, unhealthy).",
	}, []string{"result"})
	m.proxyErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rollbridge_proxy_errors_total", Help: "Upstream errors seen by the proxy.",
	})
	m.proxyDrained = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rollbridge_proxy_drained_total", Help: "Proxied exchanges cut at a drain deadline.",
	})
	m.reg.MustRegister(m.deploys, m.deployDuration, m.starts, m.healthProbes, m.proxyErrors, m.proxyDrained, m,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// follow updates the event-driven counters until ctx ends.
func (m *metrics) follow(ctx context.Context) {
	evs, cancel := m.d.events.Subscribe()
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-evs:
			m.observe(ev)
		}
	}
}

func (m *metrics) observe(ev release.Event) {
	switch ev.Message {
	case "deploy starting":
		m.deployStart = ev.At
	case "traffic switched":
		m.deploys.WithLabelValues("success").Inc()
		if !m.deployStart.IsZero() {
			m.deployDuration.Observe(ev.At.Sub(m.deployStart).Seconds())
		}
	case "deploy failed":
		m.deploys.WithLabelValues("failure").Inc()
	case "process started":
		id, _ := ev.Data["id"].(string)
		reason, _ := ev.Data["reason"].(string)
		m.starts.WithLabelValues(id, reason).Inc()
	case "health probe":
		if ok, _ := ev.Data["healthy"].(bool); ok {
			m.healthProbes.WithLabelValues("healthy").Inc()
		} else {
			m.healthProbes.WithLabelValues("unhealthy").Inc()
		}
	case evProxyError:
		m.proxyErrors.Inc()
	case evProxyDrained:
		m.proxyDrained.Inc()
	}
}

var (
	descRequests = prometheus.NewDesc("rollbridge_proxy_requests_total",
		"Proxied HTTP exchanges by release and status class.", []string{"release", "class"}, nil)
	descDuration = prometheus.NewDesc("rollbridge_proxy_request_duration_seconds",
		"Duration of proxied HTTP exchanges by release.", []string{"release"}, nil)
	descWebSockets = prometheus.NewDesc("rollbridge_proxy_websockets_total",
		"Finished WebSocket sessions by release.", []string{"release"}, nil)
	descInFlight = prometheus.NewDesc("rollbridge_proxy_in_flight",
		"Open HTTP exchanges and WebSockets by release.", []string{"release", "kind"}, nil)
	descMemory = prometheus.NewDesc("rollbridge_process_memory_bytes",
		"Memory of each running instance (cgroup MemoryCurrent or VmRSS sum).", []string{"release", "process", "unit"}, nil)
	descRestarts = prometheus.NewDesc("rollbridge_process_restarts",
		"Automatic (crash) restarts of each instance object.", []string{"release", "process"}, nil)
	descMemoryRestarts = prometheus.NewDesc("rollbridge_process_memory_restarts",
		"Memory-limit restarts of each instance object.", []string{"release", "process"}, nil)
	descUp = prometheus.NewDesc("rollbridge_process_up",
		"1 while the instance runs.", []string{"release", "process", "state"}, nil)
	descActive = prometheus.NewDesc("rollbridge_release_active",
		"1 for the release that receives new traffic.", []string{"release"}, nil)
)

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descDuration, descWebSockets, descInFlight, descMemory, descRestarts, descMemoryRestarts, descUp, descActive} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: proxy counters and the process
// table at scrape time.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, s := range m.d.proxy.Stats() {
		for class, n := range s.ByClass {
			ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(n), s.Release, class)
		}
		buckets := map[float64]uint64{}
		for i, bound := range proxy.DurationBounds {
			buckets[bound] = s.Buckets[i]
		}
		ch <- prometheus.MustNewConstHistogram(descDuration, s.Requests, s.DurationSum, buckets, s.Release)
		ch <- prometheus.MustNewConstMetric(descWebSockets, prometheus.CounterValue, float64(s.WebSockets), s.Release)
		ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(s.InFlight.HTTP), s.Release, "http")
		ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(s.InFlight.WebSocket), s.Release, "websocket")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st := m.d.mgr.Status(ctx)
	emit := func(rel string, p release.ProcessStatus) {
		up := 0.0
		if p.PID != 0 {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, rel, p.ID, p.State)
		ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.GaugeValue, float64(p.Restarts), rel, p.ID)
		ch <- prometheus.MustNewConstMetric(descMemoryRestarts, prometheus.GaugeValue, float64(p.MemoryRestarts), rel, p.ID)
		if p.RSSBytes > 0 {
			ch <- prometheus.MustNewConstMetric(descMemory, prometheus.GaugeValue, float64(p.RSSBytes), rel, p.ID, p.Unit)
		}
	}
	for _, r := range st.Releases {
		active := 0.0
		if st.ActiveReleaseID != nil && *st.ActiveReleaseID == r.ReleaseID {
			active = 1
		}
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, active, r.ReleaseID)
		for _, p := range r.Processes {
			emit(r.ReleaseID, p)
		}
	}
	for _, s := range st.Services {
		emit("", s.Process)
	}
	for _, s := range st.Singletons {
		emit("", s.Process)
	}
}

// metricsFDName names the metrics listener among passed fds: a reload hands
// it to the successor, so the address never stops answering.
const metricsFDName = "metrics"

// metricsListener takes a passed "metrics" socket (from a reloading
// predecessor, or a .socket unit), or binds --metrics-listen. inherited
// reports which.
func (d *daemon) metricsListener(ctx context.Context, passed map[string][]net.Listener) (ln net.Listener, inherited bool, err error) {
	if ls := passed[metricsFDName]; len(ls) > 0 {
		for _, extra := range ls[1:] {
			extra.Close()
		}
		return ls[0], true, nil
	}
	var lc net.ListenConfig
	ln, err = lc.Listen(ctx, "tcp", d.opts.MetricsListen)
	if err != nil {
		return nil, false, fmt.Errorf("bind metrics endpoint %s: %w", d.opts.MetricsListen, err)
	}
	return ln, false, nil
}

// startMetrics serves mx until life ends or stopMetrics is called. A failed
// bind is reported and leaves the daemon running without metrics.
func (d *daemon) startMetrics(ctx, life context.Context, mx *metrics, passed map[string][]net.Listener) {
	ln, inherited, err := d.metricsListener(ctx, passed)
	if err != nil {
		d.log.Error("metrics endpoint not started", "address", d.opts.MetricsListen, "error", err)
		d.events.Emit("metrics listen failed", map[string]any{"address": d.opts.MetricsListen, "error": err.Error()})
		return
	}
	d.metricsLn = ln
	sctx, cancel := context.WithCancel(life)
	done := make(chan struct{})
	d.endMetrics = func() { cancel(); <-done }
	d.events.Emit("metrics listening", map[string]any{"address": ln.Addr().String(), "inherited": inherited})
	go func() {
		defer close(done)
		if err := mx.serve(sctx, ln); err != nil {
			d.log.Error("metrics endpoint", "error", err)
		}
	}()
}

// stopMetrics stops the endpoint (if it runs) and waits for it; repeated
// calls are no-ops.
func (d *daemon) stopMetrics() {
	if d.endMetrics != nil {
		d.endMetrics()
	}
}

// metricsFinishTimeout bounds how long a stopping endpoint keeps serving the
// connections it already accepted.
const metricsFinishTimeout = 5 * time.Second

// serve runs the endpoint on ln until ctx ends. It then stops accepting
// (after a reload the successor holds the same socket and takes what is
// queued) and answers the connections it already accepted, each with
// "Connection: close", before closing the rest. Not http.Server.Shutdown:
// it drops, unanswered, a connection accepted just before whose request
// arrives just after — one failed scrape per reload.
func (m *metrics) serve(ctx context.Context, ln net.Listener) error {
	var (
		closing atomic.Bool
		mu      sync.Mutex
		busy    = map[net.Conn]bool{} // accepted, request not yet answered
	)
	h := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	mux := http.NewServeMux()
	mux.Handle("/metrics", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if closing.Load() {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(c net.Conn, st http.ConnState) {
			mu.Lock()
			defer mu.Unlock()
			if st == http.StateNew || st == http.StateActive {
				busy[c] = true
			} else {
				delete(busy, c)
			}
		}}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve metrics: %w", err)
	case <-ctx.Done():
	}
	closing.Store(true)
	_ = ln.Close()
	if err := <-served; !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serve metrics: %w", err)
	}
	deadline := time.Now().Add(metricsFinishTimeout)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(busy)
		mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Idle keep-alive connections and scrapes past the deadline.
	if err := srv.Close(); err != nil {
		return fmt.Errorf("close metrics connections: %w", err)
	}
	return nil
}
