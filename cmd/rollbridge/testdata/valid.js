export default {
  application: "golden",
  proxy: {port: 8399},
  processes: [
    {id: "worker", command: "bin/worker"},
    {id: "web", policy: "proxied", command: "bin/web --port {{port}}", port: {from: 18390, to: 18399}}
  ]
}
