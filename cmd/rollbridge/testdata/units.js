// Config for the systemd-units golden tests.
export default {
  application: "shop",
  control: {path: "/run/rollbridge/shop.sock", group: "deploy", mode: "660"},
  statePath: "/var/lib/rollbridge/shop.state.json",
  proxy: {host: "127.0.0.1", port: 8182, forceStopTimeoutMs: 10000},
  processes: [
    {id: "web", policy: "proxied", command: "./web --port {{port}}", port: {from: 18000, to: 18099}},
    {id: "worker", policy: "companion", command: "./worker", gracefulStopMs: 120000}
  ]
}
