// The bundled demo app (examples/demo-app), deployed by scripts/quickstart:
//
//   go build -o RELEASE_DIR/demo-app ./examples/demo-app
//   rollbridge deploy --ensure-daemon -c examples/demo.js --release-path RELEASE_DIR
//   curl http://127.0.0.1:8480/
export default {
  application: "demo",
  proxy: {port: 8480, drainTimeoutMs: 10000, forceStopTimeoutMs: 5000},
  processes: [
    {
      id: "web",
      policy: "proxied",
      command: "./demo-app --port {{port}}",
      port: {from: 18480, to: 18499},
      health: {path: "/ping", timeoutMs: 10000, intervalMs: 100}
    }
  ]
}
