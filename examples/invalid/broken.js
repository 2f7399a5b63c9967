// A config with mistakes, to see how `rollbridge validate` reports them:
//   rollbridge validate -c examples/invalid/broken.js
export default {
  proxy: {port: 8300},
  processes: [
    {id: "web", command: "node server.js --port {{port}}", port: {from: 18300, to: 18349}},
    {id: "web", command: "node worker.js", replicas: 2, gracefulStopMs: -1}
  ]
}
