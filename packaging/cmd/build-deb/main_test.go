package main

import (
	"testing"
	"time"
)

func TestDebVersion(t *testing.T) {
	epoch := time.Date(2026, 11, 21, 20, 30, 5, 0, time.UTC)
	cases := map[string]string{
		"v1.2.3":                  "1.2.3",
		"1.2.3":                   "1.2.3",
		"v1.2.3-dirty":            "1.2.3.dirty",
		"v1.2.3-4-gabcdef0":       "1.2.3+git4.gabcdef0",
		"v1.2.3-4-gabcdef0-dirty": "1.2.3+git4.gabcdef0.dirty",
		"v2.0.0rc1":               "2.0.0rc1",
		"76ace1e":                 "0.0.0+git20261121203005.g76ace1e",
		"abcdef0-dirty":           "0.0.0+git20261121203005.gabcdef0.dirty",
		"":                        "0.0.0+git20261121203005",
	}
	for in, want := range cases {
		got := debVersion(in, epoch)
		if got != want {
			t.Errorf("debVersion(%q) = %q, want %q", in, got, want)
		}
		if !validDebVersion.MatchString(got) {
			t.Errorf("debVersion(%q) = %q is not a valid Debian version", in, got)
		}
	}
	for _, bad := range []string{"v1.0", "1.0-1", "abc", "1.0 beta", ""} {
		if validDebVersion.MatchString(bad) {
			t.Errorf("%q accepted as a Debian version", bad)
		}
	}
}
