package config

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.json")

const (
	noProxied  = "Config must define exactly one proxied process; found 0"
	modeMsg    = "control.mode must be an octal file mode between 0 and 0o777"
	ownerMsg   = "control.owner must be a non-negative integer id or a name"
	groupMsg   = "control.group must be a non-negative integer id or a name"
	port1Range = "processes[1].port must be a positive port or valid {from, to} range"
	atLeastOne = "legacyTakeover must define at least one screen or process matcher"
)

// validationCases covers every rule of spec §2.2–2.12 plus CFG-29. want is
// the complete, ordered list of messages (nil = valid). Fix texts are pinned
// in testdata/fixes.golden.json (go test -run TestValidationRules -update).
var validationCases = []struct {
	name string
	src  string
	want []string
}{
	// §2.2 top level
	{"valid", procs(web), nil},
	{"config not an object", `export default 5`, []string{"Config must be an object", "proxy is required", "processes must be an array", noProxied}},
	{"config is an array", `export default [1]`, []string{"Config must be an object", "proxy is required", "processes must be an array", noProxied}},
	{"proxy missing", `export default {processes: [` + web + `]}`, []string{"proxy is required"}},
	{"proxy null", `export default {proxy: null, processes: [` + web + `]}`, []string{"proxy is required"}},
	{"proxy not an object", top(`proxy: "x"`), []string{"proxy must be an object"}},
	{"processes missing", `export default {proxy: {}}`, []string{"processes must be an array", noProxied}},
	{"processes not an array", `export default {proxy: {}, processes: {web: {}}}`, []string{"processes must be an array", noProxied}},
	{"application not a string", top(`application: 5`), []string{"application must be a string"}},
	{"application empty", top(`application: ""`), []string{"application must not be empty"}},
	{"application null is unset", top(`application: null`), nil},

	// §2.3 control
	{"control not an object", top(`control: 5`), []string{"control must be an object"}},
	{"control.path not a string", top(`control: {path: 5}`), []string{"control.path must be a string"}},
	{"control.mode number 660 rejected", top(`control: {mode: 660}`), []string{modeMsg}},
	{"control.mode string 660", top(`control: {mode: "660"}`), nil},
	{"control.mode string 0o660", top(`control: {mode: "0o660"}`), nil},
	{"control.mode number 0o660", top(`control: {mode: 0o660}`), nil},
	{"control.mode string 0", top(`control: {mode: "0"}`), nil},
	{"control.mode number 0", top(`control: {mode: 0}`), nil},
	{"control.mode four digits", top(`control: {mode: "0777"}`), nil},
	{"control.mode number 511", top(`control: {mode: 511}`), nil},
	{"control.mode number 512", top(`control: {mode: 512}`), []string{modeMsg}},
	{"control.mode above 0o777", top(`control: {mode: "1777"}`), []string{modeMsg}},
	{"control.mode five digits", top(`control: {mode: "00777"}`), []string{modeMsg}},
	{"control.mode non-octal", top(`control: {mode: "abc"}`), []string{modeMsg}},
	{"control.mode digit 8", top(`control: {mode: "680"}`), []string{modeMsg}},
	{"control.mode bare prefix", top(`control: {mode: "0o"}`), []string{modeMsg}},
	{"control.mode fractional", top(`control: {mode: 1.5}`), []string{modeMsg}},
	{"control.mode negative", top(`control: {mode: -1}`), []string{modeMsg}},
	{"control.mode boolean", top(`control: {mode: true}`), []string{modeMsg}},
	{"control.owner/group ids", top(`control: {owner: 1000, group: 0}`), nil},
	{"control.owner/group names", top(`control: {owner: "deploy", group: "deploy"}`), nil},
	{"control.owner/group digit strings", top(`control: {owner: "1000", group: "1000"}`), nil},
	{"control.owner negative, group boolean", top(`control: {owner: -1, group: true}`), []string{ownerMsg, groupMsg}},
	{"control.owner empty, group fractional", top(`control: {owner: "", group: 1.5}`), []string{ownerMsg, groupMsg}},
	{"control.owner above uint32", top(`control: {owner: 4294967296}`), []string{ownerMsg}},

	// §2.4 proxy
	{"proxy.host not a string", top(`proxy: {host: 5}`), []string{"proxy.host must be a string"}},
	{"proxy.port not a number", top(`proxy: {port: "8182"}`), []string{"proxy.port must be a number"}},
	{"proxy.port NaN", top(`proxy: {port: NaN}`), []string{"proxy.port must be a number"}},
	{"proxy.port above 65535", top(`proxy: {port: 70000}`), []string{"proxy.port must be an integer between 0 and 65535"}},
	{"proxy.port fractional", top(`proxy: {port: 80.5}`), []string{"proxy.port must be an integer between 0 and 65535"}},
	{"proxy.port negative", top(`proxy: {port: -1}`), []string{"proxy.port must be an integer between 0 and 65535"}},
	{"proxy.port 0", top(`proxy: {port: 0}`), nil},
	{"proxy timeouts negative", top(`proxy: {connectTimeoutMs: -1, responseHeaderTimeoutMs: -5}`),
		[]string{"proxy.connectTimeoutMs must be a non-negative number", "proxy.responseHeaderTimeoutMs must be a non-negative number"}},
	{"proxy numbers wrong types", top(`proxy: {upstreamHost: 1, healthPath: 2, healthTimeoutMs: "x", drainTimeoutMs: Infinity, forceStopTimeoutMs: {}}`),
		[]string{"proxy.upstreamHost must be a string", "proxy.healthPath must be a string", "proxy.healthTimeoutMs must be a number", "proxy.drainTimeoutMs must be a number", "proxy.forceStopTimeoutMs must be a number"}},
	{"proxy.drainOnShutdown not a boolean", top(`proxy: {drainOnShutdown: "yes"}`), []string{"proxy.drainOnShutdown must be a boolean"}},
	{"proxy numbers unchecked range", top(`proxy: {drainTimeoutMs: -5, healthTimeoutMs: 0.5}`), nil},

	// §2.5 releaseRetention, statePath
	{"releaseRetention not an object", top(`releaseRetention: 5`), []string{"releaseRetention must be an object"}},
	{"releaseRetention negative", top(`releaseRetention: {keep: -1, maxAgeMs: -5}`), []string{"releaseRetention.keep must be a non-negative integer", "releaseRetention.maxAgeMs must be a non-negative number"}},
	{"releaseRetention.keep fractional", top(`releaseRetention: {keep: 1.5}`), []string{"releaseRetention.keep must be a non-negative integer"}},
	{"releaseRetention.keep not a number", top(`releaseRetention: {keep: "3"}`), []string{"releaseRetention.keep must be a number"}},
	{"releaseRetention valid", top(`releaseRetention: {keep: 0, maxAgeMs: 60000}`), nil},
	{"statePath not a string", top(`statePath: 123`), []string{"statePath must be a string"}},
	{"statePath null", top(`statePath: null`), nil},

	// §2.6 legacyTakeover
	{"legacyTakeover valid", top(`legacyTakeover: {screens: ["demo"], processes: [{includes: ["/srv/demo/"]}]}`), nil},
	{"legacyTakeover not an object", top(`legacyTakeover: 5`), []string{"legacyTakeover must be an object"}},
	{"legacyTakeover empty", top(`legacyTakeover: {}`), []string{atLeastOne}},
	{"legacyTakeover empty arrays", top(`legacyTakeover: {screens: [], processes: []}`), []string{atLeastOne}},
	{"legacyTakeover.screens not an array", top(`legacyTakeover: {screens: "demo"}`), []string{"legacyTakeover.screens must be an array", atLeastOne}},
	{"legacyTakeover.screens entry empty", top(`legacyTakeover: {screens: ["ok", ""]}`), []string{"legacyTakeover.screens[1] must be a non-empty string"}},
	{"legacyTakeover.screens entry not a string", top(`legacyTakeover: {screens: [5]}`), []string{"legacyTakeover.screens[0] must be a non-empty string", atLeastOne}},
	{"legacyTakeover.processes not an array", top(`legacyTakeover: {processes: {}}`), []string{"legacyTakeover.processes must be an array", atLeastOne}},
	{"legacyTakeover.processes entry not an object", top(`legacyTakeover: {processes: [5]}`), []string{"legacyTakeover.processes[0] must be an object", atLeastOne}},
	{"legacyTakeover includes missing", top(`legacyTakeover: {processes: [{name: "x"}]}`), []string{"legacyTakeover.processes[0].includes must contain at least one matcher", atLeastOne}},
	{"legacyTakeover includes empty", top(`legacyTakeover: {screens: ["a"], processes: [{includes: []}]}`), []string{"legacyTakeover.processes[0].includes must contain at least one matcher"}},
	{"legacyTakeover includes not an array", top(`legacyTakeover: {screens: ["a"], processes: [{includes: "x"}]}`), []string{"legacyTakeover.processes[0].includes must be an array"}},
	{"legacyTakeover includes entry empty", top(`legacyTakeover: {screens: ["a"], processes: [{includes: ["a", ""]}]}`), []string{"legacyTakeover.processes[0].includes[1] must be a non-empty string"}},
	{"legacyTakeover name not a string", top(`legacyTakeover: {processes: [{includes: ["a"], name: 5}]}`), []string{"legacyTakeover.processes[0].name must be a string"}},
	{"legacyTakeover forceStopTimeoutMs negative", top(`legacyTakeover: {screens: ["a"], forceStopTimeoutMs: -1}`), []string{"legacyTakeover.forceStopTimeoutMs must be a non-negative number"}},

	// §2.7 processes[]
	{"process not an object", procs(web, `5`), []string{"processes[1] must be an object"}},
	{"process hole", `export default {proxy: {}, processes: [` + web + `, , ]}`, []string{"processes[1] must be an object"}},
	{"id and command missing", procs(web, `{policy: "companion"}`), []string{"processes[1].id is required", "processes[1].command is required"}},
	{"id and command wrong type", procs(web, `{id: 5, command: ["a"]}`), []string{"processes[1].id must be a string", "processes[1].command must be a string"}},
	{"id and command empty (CFG-29)", procs(web, `{id: "", command: "  "}`), []string{"processes[1].id must not be empty", "processes[1].command must not be empty"}},
	{"policy unknown", procs(web, worker(`policy: "daemon"`)), []string{"processes[1].policy must be one of: proxied, companion, singleton, service"}},
	{"policy not a string", procs(web, worker(`policy: 5`)), []string{"processes[1].policy must be a string"}},
	{"deployStrategy unknown", procs(web, worker(`deployStrategy: "blue-green"`)), []string{"processes[1].deployStrategy must be one of: persistent, handoff"}},
	{"cwd not a string", procs(web, worker(`cwd: 5`)), []string{"processes[1].cwd must be a string"}},
	{"user and group names", procs(web, worker(`user: "shop", group: "www-data"`)), nil},
	{"user and group numeric", procs(web, worker(`user: 1001, group: "1001"`)), nil},
	{"user empty", procs(web, worker(`user: ""`)), []string{"processes[1].user must be a non-empty user name or numeric uid"}},
	{"user with whitespace", procs(web, worker(`user: "shop user"`)), []string{"processes[1].user must be a non-empty user name or numeric uid"}},
	{"user with control character", procs(web, worker(`user: "shop\n"`)), []string{"processes[1].user must be a non-empty user name or numeric uid"}},
	{"user not a string", procs(web, worker(`user: true`)), []string{"processes[1].user must be a non-empty user name or numeric uid"}},
	{"user negative id", procs(web, worker(`user: -1`)), []string{"processes[1].user must be a non-empty user name or numeric uid"}},
	{"group with colon", procs(webWith(`group: "a:b"`)), []string{"processes[0].group must be a non-empty group name or numeric gid"}},
	{"group fractional id", procs(web, worker(`group: 1.5`)), []string{"processes[1].group must be a non-empty group name or numeric gid"}},
	{"user null is unset", procs(web, worker(`user: null`)), nil},
	{"env not an object", procs(web, worker(`env: "A=1"`)), []string{"processes[1].env must be an object"}},
	{"env values must be strings", procs(web, worker(`env: {A: 1, B: undefined, C: null, D: "ok"}`)), []string{"processes[1].env.A must be a string", "processes[1].env.B is required", "processes[1].env.C is required"}},
	{"env invalid name", procs(web, worker(`env: {"A=B": "x"}`)), []string{`processes[1].env has an invalid variable name "A=B"`}},
	{"port number", procs(web, worker(`port: 19000`)), nil},
	{"port 0 ephemeral", procs(web, worker(`port: 0`)), nil},
	{"port range 0 ephemeral", procs(web, worker(`port: {from: 0}`)), nil},
	{"port to defaults to from", procs(web, worker(`port: {from: 19000}`)), nil},
	{"port negative", procs(web, worker(`port: -1`)), []string{port1Range}},
	{"port descending", procs(web, worker(`port: {from: 200, to: 100}`)), []string{port1Range}},
	{"port negative from", procs(web, worker(`port: {from: -1, to: 5}`)), []string{port1Range}},
	{"port string", procs(web, worker(`port: "19000"`)), []string{port1Range}},
	{"port boolean", procs(web, worker(`port: true`)), []string{port1Range}},
	{"port Infinity", procs(web, worker(`port: Infinity`)), []string{port1Range}},
	{"port above 65535 (CFG-29)", procs(web, worker(`port: 70000`)), []string{"processes[1].port must be an integer between 0 and 65535"}},
	{"port fractional (CFG-29)", procs(web, worker(`port: 70000.5`)), []string{"processes[1].port must be an integer between 0 and 65535"}},
	{"port range above 65535 (CFG-29)", procs(web, worker(`port: {from: 65000, to: 70000}`)), []string{"processes[1].port.to must be an integer between 0 and 65535"}},
	{"port range fractional (CFG-29)", procs(web, worker(`port: {from: 1.5, to: 2.5}`)), []string{"processes[1].port.from must be an integer between 0 and 65535", "processes[1].port.to must be an integer between 0 and 65535"}},
	{"port range bound not a number", procs(web, worker(`port: {from: "a", to: 5}`)), []string{"processes[1].port.from must be a number"}},
	{"health false", procs(webWith(`health: false`)), nil},
	{"health null", procs(webWith(`health: null`)), nil},
	{"health true", procs(webWith(`health: true`)), []string{"processes[0].health must be an object"}},
	{"health string", procs(webWith(`health: "/ping"`)), []string{"processes[0].health must be an object"}},
	{"health fields wrong types", procs(webWith(`health: {path: 5, timeoutMs: "x", intervalMs: null, startDelayMs: "1"}`)), []string{"processes[0].health.path must be a string", "processes[0].health.timeoutMs must be a number", "processes[0].health.startDelayMs must be a number"}},
	{"health.startDelayMs negative", procs(webWith(`health: {startDelayMs: -1}`)), []string{"processes[0].health.startDelayMs must be a non-negative number"}},
	{"health on a companion is validated", procs(web, worker(`health: 5`)), []string{"processes[1].health must be an object"}},
	{"stopSignal unknown", procs(web, worker(`stopSignal: "SIGBOGUS"`)), []string{"processes[1].stopSignal must be a valid signal name"}},
	{"stopSignal lower case", procs(web, worker(`stopSignal: "sigint"`)), []string{"processes[1].stopSignal must be a valid signal name"}},
	{"stopSignal number", procs(web, worker(`stopSignal: 15`)), []string{"processes[1].stopSignal must be a valid signal name"}},
	{"stopSignal SIGQUIT", procs(web, worker(`stopSignal: "SIGQUIT"`)), nil},
	{"gracefulStopMs indefinite", procs(web, worker(`gracefulStopMs: "indefinite"`)), nil},
	{"gracefulStopMs negative", procs(web, worker(`gracefulStopMs: -1`)), []string{"processes[1].gracefulStopMs must be a non-negative number"}},
	{"gracefulStopMs other string", procs(web, worker(`gracefulStopMs: "forever"`)), []string{"processes[1].gracefulStopMs must be a number"}},
	{"restartDelayMs not a number", procs(web, worker(`restartDelayMs: "1s"`)), []string{"processes[1].restartDelayMs must be a number"}},
	{"restartDelayMs unchecked range", procs(web, worker(`restartDelayMs: -5`)), nil},
	{"nonBlockingDrain not a boolean", procs(web, worker(`nonBlockingDrain: "yes"`)), []string{"processes[1].nonBlockingDrain must be a boolean"}},
	{"replicas zero", procs(web, worker(`replicas: 0`)), []string{"processes[1].replicas must be a positive integer"}},
	{"replicas fractional", procs(web, worker(`replicas: 1.5`)), []string{"processes[1].replicas must be a positive integer"}},
	{"replicas string", procs(web, worker(`replicas: "2"`)), []string{`processes[1].replicas must be a positive integer or "auto"`}},
	{"replicas boolean", procs(web, worker(`replicas: true`)), []string{"processes[1].replicas must be a number"}},
	{"replicas auto on companion", procs(web, worker(`replicas: "auto"`)), nil},
	{"replicas auto on proxied", procs(webWith(`replicas: "auto"`)), nil},
	{"replicas auto on singleton", procs(web, worker(`replicas: "auto", policy: "singleton"`)), []string{`Process "worker" can only set replicas > 1 on the proxied process or a companion process without a port`}},
	{"outputLines zero", procs(web, worker(`outputLines: 0`)), []string{"processes[1].outputLines must be a positive integer"}},
	{"outputLines fractional", procs(web, worker(`outputLines: 2.5`)), []string{"processes[1].outputLines must be a positive integer"}},

	// §2.9 restart
	{"restart valid", procs(web, worker(`restart: {maxRestarts: 0, windowMs: 60000, backoffFactor: 2, maxDelayMs: 30000}`)), nil},
	{"restart not an object", procs(web, worker(`restart: 5`)), []string{"processes[1].restart must be an object"}},
	{"restart all invalid", procs(web, worker(`restart: {backoffFactor: 0.5, maxDelayMs: -1, maxRestarts: -2, windowMs: -3}`)), []string{
		"processes[1].restart.maxRestarts must be a non-negative integer",
		"processes[1].restart.windowMs must be a non-negative number",
		"processes[1].restart.backoffFactor must be a number greater than or equal to 1",
		"processes[1].restart.maxDelayMs must be a non-negative number",
	}},
	{"restart.maxRestarts fractional", procs(web, worker(`restart: {maxRestarts: 1.5}`)), []string{"processes[1].restart.maxRestarts must be a non-negative integer"}},
	{"restart.maxRestarts string", procs(web, worker(`restart: {maxRestarts: "5"}`)), []string{"processes[1].restart.maxRestarts must be a non-negative integer"}},
	{"restart.backoffFactor not a number", procs(web, worker(`restart: {backoffFactor: "2"}`)), []string{"processes[1].restart.backoffFactor must be a number"}},

	// §2.10 memory
	{"memory valid", procs(web, worker(`memory: {limitBytes: 1048576}`)), nil},
	{"memory backstop valid", procs(web, worker(`memory: {limitBytes: 1048576, maxBytes: 2097152}`)), nil},
	{"memory backstop not above the limit", procs(web, worker(`memory: {limitBytes: 1048576, maxBytes: 1048576}`)), []string{"processes[1].memory.maxBytes must be greater than processes[1].memory.limitBytes"}},
	{"memory backstop invalid", procs(web, worker(`memory: {limitBytes: 1048576, maxBytes: -1}`)), []string{"processes[1].memory.maxBytes must be a non-negative integer"}},
	{"memory not an object", procs(web, worker(`memory: 5`)), []string{"processes[1].memory must be an object"}},
	{"memory empty", procs(web, worker(`memory: {}`)), []string{"processes[1].memory.limitBytes must be a positive integer"}},
	{"memory all invalid", procs(web, worker(`memory: {limitBytes: 0, warnBytes: -1, checkIntervalMs: 0}`)), []string{
		"processes[1].memory.limitBytes must be a positive integer",
		"processes[1].memory.warnBytes must be a non-negative integer",
		"processes[1].memory.checkIntervalMs must be a positive number",
	}},
	{"memory fractional", procs(web, worker(`memory: {limitBytes: 1.5, warnBytes: 0.5}`)), []string{"processes[1].memory.limitBytes must be a positive integer", "processes[1].memory.warnBytes must be a non-negative integer"}},
	{"memory.limitBytes not a number", procs(web, worker(`memory: {limitBytes: "1G"}`)), []string{"processes[1].memory.limitBytes must be a number"}},

	// §2.11 lifecycle
	{"lifecycle valid", procs(web, worker(`lifecycle: {quietCommand: "q", drainCommand: "d", drainTimeoutMs: 1000, stopCommand: "s"}`)), nil},
	{"lifecycle not an object", procs(web, worker(`lifecycle: "q"`)), []string{"processes[1].lifecycle must be an object"}},
	{"lifecycle invalid", procs(web, worker(`lifecycle: {quietCommand: 5, drainTimeoutMs: -1, stopCommand: false}`)), []string{
		"processes[1].lifecycle.quietCommand must be a string",
		"processes[1].lifecycle.drainTimeoutMs must be a non-negative number",
		"processes[1].lifecycle.stopCommand must be a string",
	}},
	{"lifecycle drainCommand without timeout", procs(web, worker(`lifecycle: {drainCommand: "d"}`)), []string{"processes[1].lifecycle.drainCommand requires a positive processes[1].lifecycle.drainTimeoutMs"}},
	{"lifecycle null hooks are unset", procs(web, worker(`lifecycle: {quietCommand: null, drainCommand: null}`)), nil},

	// §2.12 cross-process rules
	{"duplicate id", procs(web, worker(""), worker("")), []string{"Duplicate process id: worker"}},
	{"id with #", procs(web, worker(`id: "work#er"`)), []string{`Process id "work#er" must not contain "#"`}},
	{"replicas on companion", procs(web, worker(`replicas: 4`)), nil},
	{"replicas on companion with port", procs(web, worker(`replicas: 2, port: {from: 19000, to: 19099}`)), []string{`Process "worker" can only set replicas > 1 on the proxied process or a companion process without a port`}},
	{"replicas on service", procs(web, worker(`replicas: 2, policy: "service"`)), []string{`Process "worker" can only set replicas > 1 on the proxied process or a companion process without a port`}},
	{"replicas on proxied", procs(webWith(`replicas: 2`)), nil},
	{"replicas on proxied with ephemeral ports", procs(webWith(`replicas: 8, port: {from: 0, to: 0}`)), nil},
	{"replicas on proxied with a small range", procs(webWith(`replicas: 4, port: {from: 18000, to: 18002}`)), []string{`Proxied process "web" needs a port range of at least 4 ports for replicas: 4`}},
	{"replicas on proxied with a fixed port", procs(webWith(`replicas: 2, port: 18000`)), []string{`Proxied process "web" needs a port range of at least 2 ports for replicas: 2`}},
	{"balance on proxied", procs(webWith(`balance: "round-robin"`)), nil},
	{"balance invalid", procs(webWith(`balance: "random"`)), []string{"processes[0].balance must be one of: least-in-flight, round-robin"}},
	{"balance on companion", procs(web, worker(`balance: "round-robin"`)), []string{`Process "worker" can only set balance on the proxied process`}},
	{"stickiness cookie", procs(webWith(`stickiness: {cookie: "rb_replica"}`)), nil},
	{"stickiness clientIp", procs(webWith(`stickiness: {clientIp: true}`)), nil},
	{"stickiness not an object", procs(webWith(`stickiness: "cookie"`)), []string{"processes[0].stickiness must be an object"}},
	{"stickiness bad cookie", procs(webWith(`stickiness: {cookie: "a b"}`)), []string{"processes[0].stickiness.cookie must be a cookie name"}},
	{"stickiness both", procs(webWith(`stickiness: {cookie: "a", clientIp: true}`)), []string{"processes[0].stickiness must set exactly one of cookie and clientIp"}},
	{"stickiness neither", procs(webWith(`stickiness: {clientIp: false}`)), []string{"processes[0].stickiness must set exactly one of cookie and clientIp"}},
	{"stickiness on companion", procs(web, worker(`stickiness: {clientIp: true}`)), []string{`Process "worker" can only set stickiness on the proxied process`}},
	{"health notify", procs(webWith(`health: {notify: true}`), worker(`health: {notify: true, timeoutMs: 5000}`)), nil},
	{"health notify not a boolean", procs(webWith(`health: {notify: "yes"}`)), []string{"processes[0].health.notify must be a boolean"}},
	{"recycle valid", procs(webWith(`recycle: {everyMs: 3600000, jitterMs: 60000}`)), nil},
	{"recycle not an object", procs(webWith(`recycle: 5`)), []string{"processes[0].recycle must be an object"}},
	{"recycle without everyMs", procs(webWith(`recycle: {jitterMs: 5}`)), []string{"processes[0].recycle.everyMs is required"}},
	{"recycle invalid", procs(webWith(`recycle: {everyMs: 0, jitterMs: -1}`)), []string{"processes[0].recycle.everyMs must be a positive number"}},
	{"recycle negative jitter", procs(webWith(`recycle: {everyMs: 10, jitterMs: -1}`)), []string{"processes[0].recycle.jitterMs must be a non-negative number"}},
	{"dependsOn valid", procs(web, worker(`dependsOn: ["beacon"]`), `{id: "beacon", policy: "service", command: "b"}`), nil},
	{"dependsOn not an array", procs(web, worker(`dependsOn: "beacon"`)), []string{"processes[1].dependsOn must be an array"}},
	{"dependsOn bad entry", procs(web, worker(`dependsOn: [5, ""]`)), []string{"processes[1].dependsOn[0] must be a non-empty string", "processes[1].dependsOn[1] must be a non-empty string"}},
	{"dependsOn unknown", procs(web, worker(`dependsOn: ["nope"]`)), []string{`Process "worker" depends on unknown process "nope"`}},
	{"dependsOn self", procs(web, worker(`dependsOn: ["worker"]`)), []string{`Process "worker" cannot depend on itself`}},
	{"dependsOn later phase", procs(web, worker(`policy: "service", dependsOn: ["web"]`)), []string{`Process "worker" (persistent service) cannot depend on "web" (proxied), which starts later in a deploy`}},
	{"dependsOn singleton from companion", procs(web, worker(`dependsOn: ["cron"]`), `{id: "cron", policy: "singleton", command: "c"}`), []string{`Process "worker" (companion) cannot depend on "cron" (singleton), which starts later in a deploy`}},
	{"dependsOn cycle", procs(webWith(`dependsOn: ["a"]`), `{id: "a", command: "a", dependsOn: ["b"]}`, `{id: "b", command: "b", dependsOn: ["web"]}`), []string{"Processes depend on each other in a cycle: web → a → b → web"}},
	{"nonBlockingDrain on companion", procs(web, worker(`nonBlockingDrain: true`)), nil},
	{"nonBlockingDrain on service", procs(web, worker(`nonBlockingDrain: true, policy: "service"`)), []string{`Process "worker" can only set nonBlockingDrain on a companion process`}},
	{"nonBlockingDrain false on service", procs(web, worker(`nonBlockingDrain: false, policy: "service"`)), nil},
	{"handoff valid", procs(web, worker(`policy: "service", deployStrategy: "handoff", port: {from: 18100, to: 18199}`)), nil},
	{"handoff on companion", procs(web, worker(`deployStrategy: "handoff"`)), []string{`Process "worker" can only set deployStrategy: "handoff" on a service process`}},
	{"handoff without port", procs(web, worker(`policy: "service", deployStrategy: "handoff"`)), []string{`Handoff service "worker" must define a port range`}},
	{"handoff fixed port", procs(web, worker(`policy: "service", deployStrategy: "handoff", port: 18100`)), []string{`Handoff service "worker" must use a multi-port range`}},
	{"persistent explicit", procs(web, worker(`policy: "service", deployStrategy: "persistent"`)), nil},
	{"stopCommand with custom stopSignal", procs(web, worker(`stopSignal: "SIGINT", lifecycle: {stopCommand: "kill -TERM $ROLLBRIDGE_PID"}`)), []string{`Process "worker" sets both lifecycle.stopCommand and a custom stopSignal, but stopCommand replaces stopSignal`}},
	{"stopCommand with explicit SIGTERM", procs(web, worker(`stopSignal: "SIGTERM", lifecycle: {stopCommand: "kill -TERM $ROLLBRIDGE_PID"}`)), nil},
	{"stopCommand alone", procs(web, worker(`lifecycle: {stopCommand: "kill -TERM $ROLLBRIDGE_PID"}`)), nil},
	{"stopSignal alone", procs(web, worker(`stopSignal: "SIGINT"`)), nil},
	{"no proxied process", procs(worker("")), []string{noProxied}},
	{"two proxied processes", procs(web, webWith(`id: "web2"`)), []string{"Config must define exactly one proxied process; found 2"}},
	{"proxied without port", procs(`{id: "web", policy: "proxied", command: "run web"}`), []string{"Proxied process web must define a port range"}},
	{"proxied with invalid port", procs(webWith(`port: -5`)), []string{"processes[0].port must be a positive port or valid {from, to} range", "Proxied process web must define a port range"}},
	{"proxied unnamed without port", procs(`{id: "", policy: "proxied", command: "run web"}`), []string{"processes[0].id must not be empty", "Proxied process (unnamed) must define a port range"}},
	{"empty ids skip cross rules", procs(web, `{id: "", command: "a", replicas: 2, policy: "service"}`, `{id: "", command: "b"}`), []string{"processes[1].id must not be empty", "processes[2].id must not be empty"}},
}

func TestValidationRules(t *testing.T) {
	golden := filepath.Join("testdata", "fixes.golden.json")
	got := map[string][]Issue{}
	var want map[string][]Issue
	if !*update {
		data, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("read %s (run with -update to create it): %v", golden, err)
		}
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for _, tc := range validationCases {
		if seen[tc.name] {
			t.Fatalf("duplicate case name %q", tc.name)
		}
		seen[tc.name] = true
		t.Run(tc.name, func(t *testing.T) {
			cfg, issues := check(t, tc.src)
			if msgs := messages(issues); !reflect.DeepEqual(msgs, tc.want) && !(len(msgs) == 0 && len(tc.want) == 0) {
				t.Fatalf("messages:\n got  %q\n want %q", msgs, tc.want)
			}
			if (cfg == nil) != (len(tc.want) > 0) {
				t.Errorf("cfg = %v with %d issues; want cfg only when valid", cfg != nil, len(issues))
			}
			for _, is := range issues {
				if is.Fix == "" || is.Message == "" {
					t.Errorf("issue with empty text: %+v", is)
				}
				if !strings.Contains(is.Fix, "e.g.") && !strings.Contains(is.Fix, "such as") || strings.Contains(is.Fix, "…") {
					t.Errorf("fix without a concrete example: %q", is.Fix)
				}
			}
			if len(issues) > 0 {
				got[tc.name] = issues
				if !*update && !reflect.DeepEqual(issues, want[tc.name]) {
					t.Errorf("fixes differ from %s:\n got  %+v\n want %+v", golden, issues, want[tc.name])
				}
			}
		})
	}
	if *update {
		data, err := json.MarshalIndent(got, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, append(data, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAllIssuesCollected: a config with problems everywhere reports all of
// them at once, field issues in config order, then the cross-process rules.
func TestAllIssuesCollected(t *testing.T) {
	src := `export default {
  application: 7,
  control: {mode: 660, owner: -1},
  proxy: {port: "x"},
  processes: [
    {id: "a#1", command: "x", policy: "proxied", replicas: 0},
    {id: "dup", command: "", stopSignal: "SIGNOPE", memory: {}},
    {id: "dup", command: "y", policy: "service", deployStrategy: "handoff", nonBlockingDrain: true, stopSignal: "SIGINT", lifecycle: {stopCommand: "s"}},
    "nope"
  ],
  releaseRetention: {keep: -1},
  statePath: 5,
  legacyTakeover: {}
}`
	want := []string{
		"application must be a string",
		"proxy.port must be a number",
		modeMsg,
		ownerMsg,
		"processes[0].replicas must be a positive integer",
		"processes[1].command must not be empty",
		"processes[1].stopSignal must be a valid signal name",
		"processes[1].memory.limitBytes must be a positive integer",
		"processes[3] must be an object",
		"releaseRetention.keep must be a non-negative integer",
		"statePath must be a string",
		atLeastOne,
		`Process id "a#1" must not contain "#"`,
		"Duplicate process id: dup",
		`Process "dup" can only set nonBlockingDrain on a companion process`,
		`Handoff service "dup" must define a port range`,
		`Process "dup" sets both lifecycle.stopCommand and a custom stopSignal, but stopCommand replaces stopSignal`,
		"Proxied process a#1 must define a port range",
	}
	path := writeConfig(t, src)
	cfg, issues := Check(context.Background(), path, testOptions())
	if cfg != nil {
		t.Fatal("cfg must be nil when there are issues")
	}
	if got := messages(issues); !reflect.DeepEqual(got, want) {
		t.Fatalf("messages:\n got  %q\n want %q", got, want)
	}

	_, err := Load(context.Background(), path, testOptions())
	var inv *InvalidError
	if !errors.As(err, &inv) {
		t.Fatalf("Load error %T %v, want *InvalidError", err, err)
	}
	wantText := "Invalid Rollbridge config:\n  - " + strings.Join(want, "\n  - ")
	if err.Error() != wantText {
		t.Fatalf("aggregated error:\n%s\nwant:\n%s", err.Error(), wantText)
	}
	if !reflect.DeepEqual(inv.Issues, issues) {
		t.Fatal("InvalidError.Issues differ from Check's issues")
	}
}
