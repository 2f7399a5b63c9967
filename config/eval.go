package config

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dop251/goja"
	"github.com/evanw/esbuild/pkg/api"
)

// Evaluation bounds (spec §2.1 Go note; LoadOptions documents them).
const (
	DefaultTimeout     = 5 * time.Second
	DefaultMemoryLimit = 256 << 20

	// maxCallStack turns unbounded recursion into a RangeError-like failure
	// instead of growing goja's stack until the memory bound trips.
	maxCallStack = 10000
	// maxExportDepth and maxExportNodes bound the copy of the exported value
	// (a cyclic or gigantic object must not make the copy run away).
	maxExportDepth = 64
	maxExportNodes = 100000
	// memorySampleEvery is how often the memory watchdog samples the heap.
	memorySampleEvery = 20 * time.Millisecond
	// abandonAfter is how long Load waits, after interrupting the runtime,
	// for evaluation to stop. goja checks for interrupts only between
	// JavaScript instructions; a long-running built-in (JSON.stringify of a
	// huge structure, say) cannot be interrupted, so Load gives up on it
	// rather than hang its caller.
	abandonAfter = time.Second
)

// heapMetric is the live-plus-unswept heap; it grows with every allocation a
// runaway script makes and is cheap to read.
const heapMetric = "/memory/classes/heap/objects:bytes"

var (
	errEvalTimeout = errors.New("evaluation timed out")
	errEvalMemory  = errors.New("evaluation exceeded the memory bound")
)

// bundle converts the config module (ES module or CommonJS) and every
// relative module it imports into one CommonJS script with an inline source
// map, so goja positions (stack traces) point at the user's files.
func bundle(absPath string, source []byte) (string, error) {
	dir := filepath.Dir(absPath)
	if err := checkUTF8(absPath, source); err != nil {
		return "", err
	}
	res := api.Build(api.BuildOptions{
		Stdin: &api.StdinOptions{
			Contents:   string(source),
			ResolveDir: dir,
			Sourcefile: filepath.Base(absPath),
			Loader:     api.LoaderJS,
		},
		AbsWorkingDir: dir,
		// Outfile is never written (Write: false); it anchors the source
		// map's relative source names in the config's directory.
		Outfile:   filepath.Join(dir, "rollbridge-config.bundle.js"),
		Bundle:    true,
		Write:     false,
		Format:    api.FormatCommonJS,
		Platform:  api.PlatformNode,
		Sourcemap: api.SourceMapInline,
		Charset:   api.CharsetUTF8,
		LogLevel:  api.LogLevelSilent,
		// goja lacks these two; esbuild lowers them to generators.
		Supported: map[string]bool{"async-generator": false, "for-await": false},
		Plugins:   []api.Plugin{nodeBuiltinsPlugin, utf8Plugin},
	})
	if len(res.Errors) > 0 {
		return "", buildError(dir, res.Errors)
	}
	if len(res.OutputFiles) == 0 {
		return "", fmt.Errorf("bundle config %s: esbuild produced no output", absPath)
	}
	return string(res.OutputFiles[0].Contents), nil
}

// buildError formats esbuild messages as "<file>:<line>: <text>".
func buildError(dir string, msgs []api.Message) error {
	const maxShown = 5
	parts := make([]string, 0, maxShown+1)
	for i, m := range msgs {
		if i == maxShown {
			parts = append(parts, fmt.Sprintf("(%d more errors)", len(msgs)-maxShown))
			break
		}
		if m.Location != nil {
			parts = append(parts, fmt.Sprintf("%s:%d: %s", absUnder(dir, m.Location.File), m.Location.Line, m.Text))
		} else {
			parts = append(parts, m.Text)
		}
	}
	return errors.New(strings.Join(parts, "; "))
}

func absUnder(dir, name string) string {
	if name == "" || filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(dir, name)
}

// checkUTF8 rejects a source that is not UTF-8. JavaScript source is UTF-8
// anyway, and esbuild 0.28 loops forever building the source map of a file
// with invalid bytes, so they must never reach it.
func checkUTF8(path string, source []byte) error {
	if utf8.Valid(source) {
		return nil
	}
	line, col := 1, 1
	for i := 0; i < len(source); {
		r, size := utf8.DecodeRune(source[i:])
		if r == utf8.RuneError && size <= 1 {
			return fmt.Errorf("%s:%d: byte 0x%02x at column %d is not valid UTF-8; save the file as UTF-8", path, line, source[i], col)
		}
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
		i += size
	}
	return nil
}

// utf8Plugin applies checkUTF8 to every file esbuild loads from disk (the
// modules the config imports); it leaves the loading itself to esbuild.
var utf8Plugin = api.Plugin{
	Name: "rollbridge-utf8",
	Setup: func(b api.PluginBuild) {
		b.OnLoad(api.OnLoadOptions{Filter: ".*", Namespace: "file"}, func(args api.OnLoadArgs) (api.OnLoadResult, error) {
			data, err := os.ReadFile(args.Path)
			if err != nil {
				return api.OnLoadResult{}, nil // esbuild reports read errors itself
			}
			if err := checkUTF8(args.Path, data); err != nil {
				return api.OnLoadResult{}, err
			}
			return api.OnLoadResult{}, nil
		})
	},
}

// nodeBuiltinsPlugin rejects imports of Node.js built-in modules at bundle
// time: the config runs in goja, which has none of them. esbuild attaches the
// location of the import/require to the error.
var nodeBuiltinsPlugin = api.Plugin{
	Name: "rollbridge-node-builtins",
	Setup: func(b api.PluginBuild) {
		b.OnResolve(api.OnResolveOptions{Filter: ".*"}, func(args api.OnResolveArgs) (api.OnResolveResult, error) {
			if !isNodeBuiltin(args.Path) {
				return api.OnResolveResult{}, nil
			}
			how := "import"
			switch args.Kind {
			case api.ResolveJSRequireCall, api.ResolveJSRequireResolve:
				how = "require"
			case api.ResolveJSDynamicImport:
				how = "dynamic import"
			}
			return api.OnResolveResult{Errors: []api.Message{{
				Text: fmt.Sprintf("%s of Node built-in %q is not supported; compute the value in the config itself or pass it through process.env", how, args.Path),
			}}}, nil
		})
	},
}

// nodeBuiltins is Node.js 20's module.builtinModules (top-level names).
var nodeBuiltins = map[string]bool{
	"_http_agent": true, "_http_client": true, "_http_common": true, "_http_incoming": true,
	"_http_outgoing": true, "_http_server": true, "_stream_duplex": true, "_stream_passthrough": true,
	"_stream_readable": true, "_stream_transform": true, "_stream_wrap": true, "_stream_writable": true,
	"_tls_common": true, "_tls_wrap": true, "assert": true, "async_hooks": true, "buffer": true,
	"child_process": true, "cluster": true, "console": true, "constants": true, "crypto": true,
	"dgram": true, "diagnostics_channel": true, "dns": true, "domain": true, "events": true, "fs": true,
	"http": true, "http2": true, "https": true, "inspector": true, "module": true, "net": true, "os": true,
	"path": true, "perf_hooks": true, "process": true, "punycode": true, "querystring": true,
	"readline": true, "repl": true, "stream": true, "string_decoder": true, "sys": true, "timers": true,
	"tls": true, "trace_events": true, "tty": true, "url": true, "util": true, "v8": true, "vm": true,
	"wasi": true, "worker_threads": true, "zlib": true,
}

func isNodeBuiltin(path string) bool {
	if strings.HasPrefix(path, "node:") {
		return true
	}
	top, _, _ := strings.Cut(path, "/")
	return nodeBuiltins[top]
}

// prelude runs before the user's code and captures the intrinsics the host
// relies on, so a config that reassigns JSON or Promise cannot confuse it.
const prelude = `(function () {
  "use strict";
  var stringify = JSON.stringify, isArray = Array.isArray, keys = Object.keys,
      isFinite = Number.isFinite, P = Promise, S = String;
  function pick(module, original) {
    var e = module.exports;
    if (e === undefined || e === null) return undefined;
    if ((typeof e === "object" || typeof e === "function") && e.__esModule === true) return e.default;
    if (e === original && keys(e).length === 0) return undefined;
    return e;
  }
  function adopt(v) { return P.resolve(v); }
  function describe(e) { try { return S(e); } catch (_) { return "(unprintable value)"; } }
  function stackOf(e) {
    try { return (e !== null && typeof e === "object" && typeof e.stack === "string") ? e.stack : ""; }
    catch (_) { return ""; }
  }
  // walk serializes a value as tagged JSON text (see decodeExport),
  // appending to one array of strings to keep the copy cheap.
  function walk(root, maxDepth, maxNodes) {
    var nodes = 0, out = [];
    function w(v, depth) {
      if (++nodes > maxNodes) throw new RangeError("the exported config has more than " + maxNodes + " values");
      if (v === undefined) { out.push('["u"]'); return; }
      if (v === null) { out.push('["z"]'); return; }
      switch (typeof v) {
        case "boolean": out.push(v ? '["b",true]' : '["b",false]'); return;
        case "string": out.push('["s",', stringify(v), ']'); return;
        case "number": out.push(isFinite(v) ? '["n",' + stringify(v) + ']' : '["N",' + stringify(S(v)) + ']'); return;
        case "function": out.push('["f"]'); return;
        case "bigint": case "symbol": out.push('["x"]'); return;
      }
      if (depth >= maxDepth) { out.push('["d"]'); return; }
      var i;
      if (isArray(v)) {
        out.push('["a",[');
        for (i = 0; i < v.length; i++) { if (i > 0) out.push(','); w(v[i], depth + 1); }
        out.push(']]');
        return;
      }
      var ks = keys(v);
      out.push('["o",[');
      for (i = 0; i < ks.length; i++) {
        if (i > 0) out.push(',');
        out.push('[', stringify(ks[i]), ',');
        w(v[ks[i]], depth + 1);
        out.push(']');
      }
      out.push(']]');
    }
    w(root, 0);
    return out.join("");
  }
  return {pick: pick, adopt: adopt, describe: describe, stackOf: stackOf, walk: walk};
})()`

// host is the set of helper functions taken from the prelude.
type host struct {
	abs                                    string
	pick, adopt, describe, stackOf, walker goja.Callable
}

// evaluate bundles and runs the config module and returns a copy of its
// default export (after calling it and settling its promise). It never runs
// longer than opts.Timeout (plus abandonAfter for uninterruptible
// built-ins) and interrupts the script when the heap grows by more than
// opts.MemoryLimit.
func evaluate(ctx context.Context, absPath string, source []byte, opts LoadOptions) (*value, error) {
	start := time.Now()
	code, err := boundedBundle(ctx, absPath, source, opts.Timeout)
	if err != nil {
		return nil, err
	}
	// Bundling and evaluation share one time bound.
	remaining := max(opts.Timeout-time.Since(start), 0)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("evaluate config %s: %w", absPath, err)
	}

	vm := goja.New()
	vm.SetMaxCallStackSize(maxCallStack)

	type result struct {
		json string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			// goja reports script errors as values, but a bug in it must
			// not take the daemon down.
			if r := recover(); r != nil {
				done <- result{err: fmt.Errorf("evaluate config %s: internal JavaScript runtime error: %v", absPath, r)}
			}
		}()
		s, err := runModule(vm, absPath, code, opts.Env)
		done <- result{s, err}
	}()

	timer := time.AfterFunc(remaining, func() { vm.Interrupt(errEvalTimeout) })
	defer timer.Stop()
	stopWatch := watchMemory(vm, opts.MemoryLimit)
	defer stopWatch()
	hard := time.NewTimer(remaining + abandonAfter)
	defer hard.Stop()

	var r result
	select {
	case r = <-done:
	case <-hard.C:
		return nil, fmt.Errorf("Config %s did not finish evaluating within %s and could not be interrupted (stuck in a built-in function); evaluation abandoned", absPath, opts.Timeout)
	case <-ctx.Done():
		vm.Interrupt(ctx.Err())
		select {
		case r = <-done:
		case <-time.After(abandonAfter):
			return nil, fmt.Errorf("evaluate config %s: %w (evaluation abandoned)", absPath, ctx.Err())
		}
	}
	if r.err != nil {
		return nil, explainInterrupt(r.err, absPath, opts)
	}
	return decodeExport([]byte(r.json))
}

// boundedBundle runs bundle under the evaluation time bound. esbuild cannot
// be interrupted, so on a timeout its goroutine is abandoned: the caller gets
// an error instead of a hang should the bundler ever loop on some input.
func boundedBundle(ctx context.Context, absPath string, source []byte, timeout time.Duration) (string, error) {
	type result struct {
		code string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := bundle(absPath, source)
		done <- result{code, err}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-done:
		return r.code, r.err
	case <-t.C:
		return "", fmt.Errorf("Config %s could not be compiled within %s (the JavaScript bundler did not finish); simplify the file or report it as a bug", absPath, timeout)
	case <-ctx.Done():
		return "", fmt.Errorf("compile config %s: %w", absPath, ctx.Err())
	}
}

// explainInterrupt replaces the runtime's interrupt errors by messages that
// say which bound was hit.
func explainInterrupt(err error, absPath string, opts LoadOptions) error {
	switch {
	case errors.Is(err, errEvalTimeout):
		return fmt.Errorf("Config %s did not finish evaluating within %s; check it for endless loops", absPath, opts.Timeout)
	case errors.Is(err, errEvalMemory):
		return fmt.Errorf("Config %s allocated more than %s while evaluating; check it for runaway allocations", absPath, formatBytes(opts.MemoryLimit))
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("evaluate config %s: %w", absPath, err)
	}
	return err
}

func formatBytes(n uint64) string {
	if n >= 1<<20 && n%(1<<20) == 0 {
		return strconv.FormatUint(n>>20, 10) + " MiB"
	}
	return strconv.FormatUint(n, 10) + " bytes"
}

// watchMemory interrupts vm when the heap grows more than limit bytes above
// its size at the start. It samples every memorySampleEvery; the returned
// function stops the watchdog and waits for it to exit.
func watchMemory(vm *goja.Runtime, limit uint64) (stop func()) {
	sample := []metrics.Sample{{Name: heapMetric}}
	read := func() uint64 {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return sample[0].Value.Uint64()
	}
	// Garbage left by earlier work must not count against the script, so
	// the baseline is measured right after a collection (one forced GC per
	// evaluation; config loads are rare).
	runtime.GC()
	base := read()
	quit := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		tick := time.NewTicker(memorySampleEvery)
		defer tick.Stop()
		trigger := base + limit
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
				if read() <= trigger {
					continue
				}
				// The heap figure includes garbage not yet swept; collect
				// once to measure what is really held.
				runtime.GC()
				held := read()
				if held > base+limit {
					vm.Interrupt(errEvalMemory)
					return
				}
				// A false alarm: look again after half a limit's worth of
				// growth, so garbage does not force a GC on every tick and
				// a real overrun is still caught by base + 1.5 × limit.
				trigger = max(held, base) + limit/2
			}
		}
	}()
	return func() {
		close(quit)
		<-exited
	}
}

// runModule runs the bundled module on vm and returns the default export as
// tagged JSON (see decodeExport). It runs on the evaluation goroutine.
func runModule(vm *goja.Runtime, absPath, code string, env []string) (string, error) {
	h, err := newHost(vm, absPath)
	if err != nil {
		return "", err
	}
	module := vm.NewObject()
	exports := vm.NewObject()
	if err := module.Set("exports", exports); err != nil {
		return "", err
	}
	globals := map[string]any{
		"module":  module,
		"exports": exports,
		"process": newProcessObject(vm, env),
		"console": newConsoleObject(vm),
		"require": newRequireFunc(vm),
	}
	for name, v := range globals {
		if err := vm.Set(name, v); err != nil {
			return "", fmt.Errorf("evaluate config %s: set %s: %w", absPath, name, err)
		}
	}

	prg, err := goja.Compile(absPath, code, false)
	if err != nil {
		return "", fmt.Errorf("%s: unsupported JavaScript syntax after conversion: %w", absPath, err)
	}
	if _, err := vm.RunProgram(prg); err != nil {
		return "", h.scriptError(err)
	}

	def, err := h.pick(goja.Undefined(), module, exports)
	if err != nil {
		return "", h.scriptError(err)
	}
	if goja.IsUndefined(def) {
		return "", fmt.Errorf("Config module %s must export a default config object or function", absPath)
	}
	if fn, ok := goja.AssertFunction(def); ok {
		if def, err = fn(goja.Undefined()); err != nil {
			return "", h.scriptError(err)
		}
	}
	// Promise.resolve adopts promises and thenables; its jobs run when the
	// call returns to Go, so afterwards the promise is settled unless it
	// waits for something that can never happen (there are no timers or I/O).
	pv, err := h.adopt(goja.Undefined(), def)
	if err != nil {
		return "", h.scriptError(err)
	}
	promise, ok := pv.Export().(*goja.Promise)
	if !ok {
		return "", fmt.Errorf("evaluate config %s: internal error: Promise.resolve returned %T", absPath, pv.Export())
	}
	switch promise.State() {
	case goja.PromiseStatePending:
		return "", fmt.Errorf("Config function in %s returned a promise that never settled; the config runs without timers or I/O, so it must resolve on its own", absPath)
	case goja.PromiseStateRejected:
		return "", h.rejection(promise.Result())
	}
	out, err := h.walker(goja.Undefined(), promise.Result(), vm.ToValue(maxExportDepth), vm.ToValue(maxExportNodes))
	if err != nil {
		return "", h.scriptError(err)
	}
	return out.String(), nil
}

func newHost(vm *goja.Runtime, absPath string) (*host, error) {
	v, err := vm.RunString(prelude)
	if err != nil {
		return nil, fmt.Errorf("evaluate config %s: prelude: %w", absPath, err)
	}
	obj := v.ToObject(vm)
	h := &host{abs: absPath}
	for name, dst := range map[string]*goja.Callable{
		"pick": &h.pick, "adopt": &h.adopt, "describe": &h.describe, "stackOf": &h.stackOf, "walk": &h.walker,
	} {
		fn, ok := goja.AssertFunction(obj.Get(name))
		if !ok {
			return nil, fmt.Errorf("evaluate config %s: prelude lacks %s", absPath, name)
		}
		*dst = fn
	}
	return h, nil
}

// newProcessObject gives the config a Node-like process.env (a plain,
// writable copy of env; later duplicates win as in Node).
func newProcessObject(vm *goja.Runtime, env []string) *goja.Object {
	envObj := vm.NewObject()
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		_ = envObj.Set(k, v)
	}
	proc := vm.NewObject()
	_ = proc.Set("env", envObj)
	_ = proc.Set("platform", runtime.GOOS)
	return proc
}

// newRequireFunc handles require() calls esbuild could not bundle (a
// computed module name): there is no module system at run time.
func newRequireFunc(vm *goja.Runtime) func(goja.FunctionCall) goja.Value {
	return func(call goja.FunctionCall) goja.Value {
		name := call.Argument(0).String()
		hint := "only require(\"./file.js\") with a literal relative path is bundled"
		if isNodeBuiltin(name) {
			hint = "Node built-ins are not available; compute the value in the config itself or pass it through process.env"
		}
		panic(vm.NewTypeError("require(%q) is not supported at run time: %s", name, hint))
	}
}

// newConsoleObject lets configs keep debugging calls; a library must not
// write to the caller's stdout (validate --json prints there), so they are
// no-ops.
func newConsoleObject(vm *goja.Runtime) *goja.Object {
	c := vm.NewObject()
	noop := func(goja.FunctionCall) goja.Value { return goja.Undefined() }
	for _, name := range []string{"log", "info", "warn", "error", "debug", "trace"} {
		_ = c.Set(name, noop)
	}
	return c
}

// scriptError turns an error from a goja call into a message naming the
// config file and line where possible.
func (h *host) scriptError(err error) error {
	var interrupted *goja.InterruptedError
	if errors.As(err, &interrupted) {
		if reason, ok := interrupted.Value().(error); ok {
			return reason
		}
		return fmt.Errorf("evaluate config %s: interrupted: %v", h.abs, interrupted.Value())
	}
	var overflow *goja.StackOverflowError
	if errors.As(err, &overflow) {
		return h.located(overflow.Stack(), "RangeError: Maximum call stack size exceeded")
	}
	var ex *goja.Exception
	if errors.As(err, &ex) {
		return h.located(ex.Stack(), h.describeValue(ex.Value()))
	}
	return fmt.Errorf("evaluate config %s: %w", h.abs, err)
}

// located prefixes msg with the first source position in frames.
func (h *host) located(frames []goja.StackFrame, msg string) error {
	for _, f := range frames {
		pos := f.Position()
		if pos.Filename == "" || pos.Line == 0 {
			continue
		}
		return fmt.Errorf("%s:%d: %s", absUnder(filepath.Dir(h.abs), pos.Filename), pos.Line, msg)
	}
	return fmt.Errorf("%s: %s", h.abs, msg)
}

// rejection describes a rejected default-export promise.
func (h *host) rejection(reason goja.Value) error {
	msg := h.describeValue(reason)
	if file, line, ok := stackLocation(h.callString(h.stackOf, reason)); ok {
		return fmt.Errorf("Config function in %s rejected: %s (at %s:%d)", h.abs, msg, absUnder(filepath.Dir(h.abs), file), line)
	}
	return fmt.Errorf("Config function in %s rejected: %s", h.abs, msg)
}

func (h *host) describeValue(v goja.Value) string {
	if v == nil {
		return "undefined"
	}
	return h.callString(h.describe, v)
}

// callString calls a prelude helper that returns a string; any failure (an
// interrupt, say) yields "".
func (h *host) callString(fn goja.Callable, v goja.Value) string {
	out, err := fn(goja.Undefined(), v)
	if err != nil || out == nil {
		return ""
	}
	return out.String()
}

// stackLocation finds the first "at … (file:line:col(pc))" frame of a goja
// Error stack string. goja formats frames as "at name (file:line:col(pc))"
// or "at file:line:col(pc)".
func stackLocation(stack string) (file string, line int, ok bool) {
	for _, l := range strings.Split(stack, "\n") {
		l = strings.TrimSpace(l)
		rest, found := strings.CutPrefix(l, "at ")
		if !found {
			continue
		}
		if i := strings.Index(rest, " ("); i >= 0 && strings.HasSuffix(rest, ")") {
			rest = rest[i+2 : len(rest)-1]
		}
		if i := strings.LastIndex(rest, "("); i >= 0 {
			rest = rest[:i] // drop the "(pc)" suffix
		}
		// rest is now file:line:col
		colAt := strings.LastIndex(rest, ":")
		if colAt < 0 {
			continue
		}
		lineAt := strings.LastIndex(rest[:colAt], ":")
		if lineAt < 0 {
			continue
		}
		n, err := strconv.Atoi(rest[lineAt+1 : colAt])
		if err != nil || n <= 0 || rest[:lineAt] == "" || rest[:lineAt] == "native" {
			continue
		}
		return rest[:lineAt], n, true
	}
	return "", 0, false
}

// readSource reads the config file, insisting on a regular file.
func readSource(absPath string) ([]byte, error) {
	fi, err := os.Stat(absPath)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", absPath, unwrapPathError(err))
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read config %s: not a regular file", absPath)
	}
	data, err := os.ReadFile(absPath)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", absPath, unwrapPathError(err))
	}
	return data, nil
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
