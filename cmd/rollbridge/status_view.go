package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"
)

// formatStatus renders a status reply as the compact table shown on a
// terminal. It reads the reply as generic JSON and tolerates missing or
// mistyped fields (a daemon of another version), printing "-" for them.
func formatStatus(m map[string]any) string {
	var b strings.Builder
	active := "none"
	if s, ok := m["activeReleaseId"].(string); ok {
		active = s
	}
	proxy := obj(m["proxy"])
	fmt.Fprintf(&b, "%s  proxy %s:%s  runner %s  active release: %s\n\n",
		text(m["application"]), text(proxy["host"]), text(proxy["port"]), text(m["runner"]), active)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCOPE\tPROCESS\tUNIT\tSTATE\tPID\tUPTIME\tRESTARTS\tMEMORY\tCONNECTIONS")
	for _, r := range list(m["releases"]) {
		rel := obj(r)
		scope := fmt.Sprintf("release %s (%s)", text(rel["releaseId"]), text(rel["state"]))
		fmt.Fprintf(tw, "%s\t\t\t\t\t\t\t\t%s\n", scope, connections(rel["connections"]))
		for _, p := range list(rel["processes"]) {
			row(tw, "", obj(p))
		}
	}
	for _, kind := range []string{"services", "singletons"} {
		for _, s := range list(m[kind]) {
			row(tw, strings.TrimSuffix(kind, "s"), obj(obj(s)["process"]))
		}
	}
	tw.Flush()
	return b.String()
}

func row(tw *tabwriter.Writer, scope string, p map[string]any) {
	pid, up, mem := "-", "-", "-"
	if v, ok := p["pid"].(float64); ok && v > 0 {
		pid = fmt.Sprint(int(v))
	}
	if v, ok := p["uptimeMs"].(float64); ok {
		up = (time.Duration(v) * time.Millisecond).Round(time.Second).String()
	}
	if v, ok := p["rssBytes"].(float64); ok {
		mem = fmt.Sprintf("%.1f MiB", v/(1<<20))
	}
	conns := "" // only proxied replicas carry their own counts
	if _, ok := p["connections"]; ok {
		conns = connections(p["connections"])
		if in, ok := p["inRotation"].(bool); ok && !in {
			conns += " (out of rotation)"
		}
	}
	fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
		scope, text(p["id"]), text(p["unit"]), text(p["state"]), pid, up, text(p["restarts"]), mem, conns)
}

func connections(v any) string {
	c, ok := v.(map[string]any)
	if !ok {
		return "-"
	}
	return fmt.Sprintf("http %s, ws %s", text(c["http"]), text(c["websocket"]))
}

// text prints a JSON scalar; absent values print as "-".
func text(v any) string {
	switch v := v.(type) {
	case nil:
		return "-"
	case string:
		if v == "" {
			return "-"
		}
		return v
	case float64:
		return fmt.Sprint(v)
	}
	return fmt.Sprint(v)
}

func obj(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func list(v any) []any {
	l, _ := v.([]any)
	return l
}
