export default {
  proxy: {port: 8399},
  processes: [{id: "web", policy: "proxied", command: "bin/web"}]
}
