package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// specChecklistItems is the number of items in the review checklist of the
// original's behaviour spec (section 10), which docs/checklist.md maps.
const specChecklistItems = 208

var (
	checklistRowRE = regexp.MustCompile(`^\| ([A-Z]{3}-\d{2}) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$`)
	checklistTest  = regexp.MustCompile("^`([a-z0-9/]+)\\.(Test[A-Za-z0-9_]+)`$")
)

// TestChecklistMap keeps docs/checklist.md true: one row per checklist
// item, and every test it cites exists as a top-level test function in the
// package it names (a renamed or deleted test fails here until the map
// follows).
func TestChecklistMap(t *testing.T) {
	root := docRepoRoot(t)
	text, err := os.ReadFile(filepath.Join(root, "docs", "checklist.md"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	sources := map[string]string{} // package dir → its test files, concatenated
	for i, line := range strings.Split(string(text), "\n") {
		if !strings.HasPrefix(line, "| ") || !checklistRowRE.MatchString(line) {
			if m := regexp.MustCompile(`^\| [A-Z]{3}-\d`).MatchString(line); m {
				t.Errorf("docs/checklist.md:%d: malformed row %q", i+1, line)
			}
			continue
		}
		m := checklistRowRE.FindStringSubmatch(line)
		id, tests, status := m[1], strings.TrimSpace(m[3]), strings.TrimSpace(m[4])
		if seen[id] {
			t.Errorf("docs/checklist.md:%d: %s listed twice", i+1, id)
		}
		seen[id] = true
		if !strings.HasPrefix(status, "covered") && !strings.HasPrefix(status, "not covered: ") {
			t.Errorf("docs/checklist.md:%d: %s: status %q is neither covered… nor not covered: …", i+1, id, status)
		}
		if tests == "—" {
			if strings.HasPrefix(status, "covered") {
				t.Errorf("docs/checklist.md:%d: %s is covered by no test", i+1, id)
			}
			continue
		}
		for _, cite := range strings.Split(tests, ", ") {
			if cite == "`scripts/test-system-manager`" {
				if _, err := os.Stat(filepath.Join(root, "scripts", "test-system-manager")); err != nil {
					t.Errorf("docs/checklist.md:%d: %s: %v", i+1, id, err)
				}
				continue
			}
			cm := checklistTest.FindStringSubmatch(cite)
			if cm == nil {
				t.Errorf("docs/checklist.md:%d: %s: citation %q is not `pkg.TestName`", i+1, id, cite)
				continue
			}
			pkg, name := cm[1], cm[2]
			src, ok := sources[pkg]
			if !ok {
				files, _ := filepath.Glob(filepath.Join(root, pkg, "*_test.go"))
				var b strings.Builder
				for _, f := range files {
					data, err := os.ReadFile(f)
					if err != nil {
						t.Fatal(err)
					}
					b.Write(data)
				}
				src = b.String()
				sources[pkg] = src
			}
			if !strings.Contains(src, "\nfunc "+name+"(t *testing.T)") {
				t.Errorf("docs/checklist.md:%d: %s cites %s.%s, which is no test function of %s", i+1, id, pkg, name, pkg)
			}
		}
	}
	if len(seen) != specChecklistItems {
		t.Errorf("docs/checklist.md maps %d checklist items, want %d", len(seen), specChecklistItems)
	}
}
