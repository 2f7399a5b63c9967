// The demo app (examples/demo-app) as a cluster of proxied replicas, see
// docs/replicas.md: one replica per CPU, each its own unit on its own port,
// readiness by sd_notify READY=1 plus an HTTP probe, sticky sessions by
// cookie, a daily recycle, and a worker that starts once the beacon service
// is ready.
//
//   go build -o RELEASE_DIR/demo-app ./examples/demo-app
//   rollbridge deploy --ensure-daemon -c examples/replicas.js --release-path RELEASE_DIR
//   rollbridge restart -c examples/replicas.js --process web#0
export default {
  application: "demo-replicas",
  proxy: {port: 8490, drainTimeoutMs: 10000, forceStopTimeoutMs: 5000},
  processes: [
    {
      id: "beacon",
      policy: "service",
      command: "exec ./demo-app --port {{port}} --ready-delay-ms 200",
      port: {from: 18590, to: 18599},
      health: {notify: true, timeoutMs: 10000}
    },
    {
      id: "worker",
      dependsOn: ["beacon"],
      command: "exec ./demo-app --port 0 --fetch http://127.0.0.1:{{ports.beacon}}/stats"
    },
    {
      id: "web",
      policy: "proxied",
      replicas: "auto",
      command: "exec ./demo-app --port {{port}} --ready-delay-ms 200",
      port: {from: 18500, to: 18589},
      health: {notify: true, path: "/ping", timeoutMs: 10000, intervalMs: 100},
      stickiness: {cookie: "rb_replica"},
      recycle: {everyMs: 86400000, jitterMs: 3600000}
    }
  ]
}
