package config

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// placeholderRE matches {{ key }} (spec §2.13). The whitespace class is
// JavaScript's \s, which the original pattern used; keys are [A-Za-z0-9_.-].
var placeholderRE = regexp.MustCompile(`\{\{[\t\n\v\f\r\p{Zs}\x{2028}\x{2029}\x{feff}]*([A-Za-z0-9_.-]+)[\t\n\v\f\r\p{Zs}\x{2028}\x{2029}\x{feff}]*\}\}`)

// TemplateError is a placeholder that cannot be rendered. Error() is the
// spec's exact message for a missing value; Field says where it occurred
// ("command", "cwd" or "env.<NAME>").
type TemplateError struct {
	Field string
	// Placeholder is the matched text, braces and whitespace included.
	Placeholder string
	// Object is set when the key names an object rather than a value.
	Object bool
	// Fields lists the object's keys when Object is set (sorted).
	Fields []string
}

func (e *TemplateError) Error() string {
	if !e.Object {
		return "Missing template value for " + e.Placeholder
	}
	key := placeholderKey(e.Placeholder)
	hint := "one of its fields"
	if len(e.Fields) > 0 {
		hint = fmt.Sprintf("one of its fields, e.g. {{%s.%s}}", key, e.Fields[0])
	}
	return fmt.Sprintf("Template value for %s is an object; use %s", e.Placeholder, hint)
}

func placeholderKey(match string) string {
	if m := placeholderRE.FindStringSubmatch(match); m != nil {
		return m[1]
	}
	return match
}

// tplNode is a template value: a string leaf or a nested map.
type tplNode struct {
	leaf     string
	isLeaf   bool
	children map[string]*tplNode
}

func leafNode(s string) *tplNode { return &tplNode{leaf: s, isLeaf: true} }

func mapNode() *tplNode { return &tplNode{children: map[string]*tplNode{}} }

func (n *tplNode) set(key string, child *tplNode) *tplNode {
	n.children[key] = child
	return n
}

// lookup walks a dotted key; nil when any step is missing.
func (n *tplNode) lookup(key string) *tplNode {
	cur := n
	for _, part := range strings.Split(key, ".") {
		if cur == nil || cur.isLeaf {
			return nil
		}
		cur = cur.children[part]
	}
	return cur
}

// render replaces every placeholder in s. Text that does not match the
// placeholder pattern is left untouched.
func render(s string, vars *tplNode) (string, error) {
	matches := placeholderRE.FindAllStringSubmatchIndex(s, -1)
	if matches == nil {
		return s, nil
	}
	var b strings.Builder
	last := 0
	for _, m := range matches {
		b.WriteString(s[last:m[0]])
		whole, key := s[m[0]:m[1]], s[m[2]:m[3]]
		node := vars.lookup(key)
		switch {
		case node == nil:
			return "", &TemplateError{Placeholder: whole}
		case !node.isLeaf:
			fields := make([]string, 0, len(node.children))
			for k := range node.children {
				fields = append(fields, k)
			}
			sort.Strings(fields)
			return "", &TemplateError{Placeholder: whole, Object: true, Fields: fields}
		}
		b.WriteString(node.leaf)
		last = m[1]
	}
	b.WriteString(s[last:])
	return b.String(), nil
}

// templateVars builds the values of spec §2.13 for one instance.
func templateVars(rc ReleaseContext, p *Process, replica int, port int, hasPort bool) *tplNode {
	root := mapNode().
		set("application", leafNode(rc.Application)).
		set("releaseId", leafNode(rc.ReleaseID)).
		set("releasePath", leafNode(rc.ReleasePath)).
		set("revision", leafNode(rc.revision())).
		set("processId", leafNode(p.ID)).
		set("replicaIndex", leafNode(strconv.Itoa(replica))).
		set("replicaCount", leafNode(strconv.Itoa(p.Replicas)))
	if hasPort {
		root.set("port", leafNode(strconv.Itoa(port)))
	}
	ports := mapNode()
	for id, pt := range rc.Ports {
		ports.set(id, leafNode(strconv.Itoa(pt)))
	}
	root.set("ports", ports)
	root.set("proxy", mapNode().
		set("host", leafNode(rc.Proxy.Host)).
		set("port", leafNode(strconv.Itoa(rc.Proxy.Port))).
		set("upstreamHost", leafNode(rc.Proxy.UpstreamHost)))
	env := mapNode()
	for _, kv := range rc.Env {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			env.set(k, leafNode(v))
		}
	}
	root.set("env", env)
	return root
}
