package daemon

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rollbridge/rollbridge/proxy"
	"github.com/rollbridge/rollbridge/release"
)

// metrics is the optional Prometheus endpoint (`daemon --metrics-listen`).
// Proxy and process figures are read at scrape time; deploys, restarts and
// health probes are counted from the event stream.
type metrics struct {
	d   *daemon
	reg *prometheus.Registry

	deploys        *prometheus.CounterVec
	deployDuration prometheus.Histogram
	starts         *prometheus.CounterVec
	healthProbes   *prometheus.CounterVec
	proxyErrors    prometheus.Counter

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
	m.reg.MustRegister(m.deploys, m.deployDuration, m.starts, m.healthProbes, m.proxyErrors, m,
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
	case "proxy error":
		m.proxyErrors.Inc()
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

// serve runs the endpoint on addr until ctx ends.
func (m *metrics) serve(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
