// No proxied process, a duplicate id, a descending port range and an unknown signal.
module.exports = {
  application: "golden",
  proxy: {port: 8399},
  processes: [
    {id: "web", command: "bin/web"},
    {id: "web", command: "bin/web2", port: {from: 9000, to: 8000}},
    {id: "worker#1", command: "bin/worker", stopSignal: "SIGNOPE"}
  ]
}
