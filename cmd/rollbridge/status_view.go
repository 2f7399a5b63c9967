package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"
)

// formatStatus renders a status reply as a compact table for terminals.
func formatStatus(m map[string]any) string {
	var b strings.Builder
	active := "none"
	if s, ok := m["activeReleaseId"].(string); ok {
		active = s
	}
	proxy, _ := m["proxy"].(map[string]any)
	fmt.Fprintf(&b, "%v  proxy %v:%v  runner %v  active release: %s\n\n", m["application"], proxy["host"], proxy["port"], m["runner"], active)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCOPE\tPROCESS\tSTATE\tPID\tUPTIME\tRESTARTS\tMEMORY\tCONNECTIONS")
	for _, r := range list(m["releases"]) {
		rel := r.(map[string]any)
		conns := rel["connections"].(map[string]any)
		scope := fmt.Sprintf("release %v (%v)", rel["releaseId"], rel["state"])
		fmt.Fprintf(tw, "%s\t\t\t\t\t\t\thttp %v, ws %v\n", scope, conns["http"], conns["websocket"])
		for _, p := range list(rel["processes"]) {
			row(tw, "", p.(map[string]any))
		}
	}
	for _, kind := range []string{"services", "singletons"} {
		for _, s := range list(m[kind]) {
			e := s.(map[string]any)
			row(tw, strings.TrimSuffix(kind, "s"), e["process"].(map[string]any))
		}
	}
	tw.Flush()
	return b.String()
}

func row(tw *tabwriter.Writer, scope string, p map[string]any) {
	pid, up, mem := "-", "-", "-"
	if v, ok := p["pid"].(float64); ok {
		pid = fmt.Sprint(int(v))
	}
	if v, ok := p["uptimeMs"].(float64); ok {
		up = (time.Duration(v) * time.Millisecond).Round(time.Second).String()
	}
	if v, ok := p["rssBytes"].(float64); ok {
		mem = fmt.Sprintf("%.1f MiB", v/(1<<20))
	}
	fmt.Fprintf(tw, "  %s\t%v\t%v\t%s\t%s\t%v\t%s\t\n", scope, p["id"], p["state"], pid, up, p["restarts"], mem)
}

func list(v any) []any {
	l, _ := v.([]any)
	return l
}
