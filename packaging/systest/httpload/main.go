// Command httpload is the HTTP client of scripts/test-system-manager, copied
// into the test container (which has no curl): one checked request, or a
// load loop that counts every failed request while a deploy or a daemon
// reload happens.
//
//	httpload get URL [-status 200] [-contains TEXT] [-timeout 30s]
//	httpload load URL -stop-file F [-out F] [-workers 2] [-pause 2ms]
//
// `get` prints "<status> <body>" and exits 1 when the status or body is not
// the expected one. `load` sends requests on fresh connections (like curl in
// a loop) until the stop file exists, then prints (and writes to -out) a JSON
// summary: {"requests", "failures", "statuses", "releases", "errors"}.
// A failure is a transport error or a status other than 200.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: httpload get URL [flags] | httpload load URL -stop-file F [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	mode, url, args := os.Args[1], os.Args[2], os.Args[3:]
	var err error
	switch mode {
	case "get":
		err = get(ctx, url, args)
	case "load":
		err = load(ctx, url, args)
	default:
		err = fmt.Errorf("unknown mode %q: use get or load", mode)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "httpload: %v\n", err)
		os.Exit(1)
	}
}

func get(ctx context.Context, url string, args []string) error {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	status := fs.Int("status", 200, "expected status code")
	contains := fs.String("contains", "", "text the body must contain")
	timeout := fs.Duration("timeout", 30*time.Second, "request timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	client := &http.Client{Timeout: *timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("GET %s: read body: %w", url, err)
	}
	fmt.Printf("%d %s", resp.StatusCode, body)
	if !strings.HasSuffix(string(body), "\n") {
		fmt.Println()
	}
	if resp.StatusCode != *status {
		return fmt.Errorf("GET %s: status %d, want %d", url, resp.StatusCode, *status)
	}
	if !strings.Contains(string(body), *contains) {
		return fmt.Errorf("GET %s: body does not contain %q", url, *contains)
	}
	return nil
}

type summary struct {
	Requests int            `json:"requests"`
	Failures int            `json:"failures"`
	Statuses map[string]int `json:"statuses"`
	Releases map[string]int `json:"releases"`
	Errors   []string       `json:"errors"`
	Seconds  float64        `json:"seconds"`
}

var releaseRe = regexp.MustCompile(`release (\S+)`)

func load(ctx context.Context, url string, args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	stopFile := fs.String("stop-file", "", "stop when this file exists (required)")
	out := fs.String("out", "", "also write the JSON summary here")
	workers := fs.Int("workers", 2, "concurrent clients")
	pause := fs.Duration("pause", 2*time.Millisecond, "pause between a worker's requests")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *stopFile == "" {
		return errors.New("-stop-file is required")
	}
	// Fresh connection per request, like curl in a loop: a request that
	// meets a closed listener fails instead of being retried by the client.
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var mu sync.Mutex
	s := summary{Statuses: map[string]int{}, Releases: map[string]int{}, Errors: []string{}}
	record := func(status int, body string, err error) {
		mu.Lock()
		defer mu.Unlock()
		s.Requests++
		if err != nil {
			s.Failures++
			if len(s.Errors) < 20 {
				s.Errors = append(s.Errors, time.Now().Format("15:04:05.000 ")+err.Error())
			}
			return
		}
		s.Statuses[strconv.Itoa(status)]++
		if status != http.StatusOK {
			s.Failures++
			if len(s.Errors) < 20 {
				s.Errors = append(s.Errors, fmt.Sprintf("%s status %d: %s", time.Now().Format("15:04:05.000"), status, strings.TrimSpace(body)))
			}
			return
		}
		if m := releaseRe.FindStringSubmatch(body); m != nil {
			s.Releases[m[1]]++
		}
	}
	// stopping ends the loop between requests, so the request each worker
	// has in flight when the stop file appears still completes and counts.
	var stopping atomic.Bool
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stopping.Load() && lctx.Err() == nil {
				status, body, err := once(lctx, client, url)
				if lctx.Err() != nil {
					return // interrupted (signal): not a lost request
				}
				record(status, body, err)
				time.Sleep(*pause)
			}
		}()
	}
	for lctx.Err() == nil {
		if _, err := os.Stat(*stopFile); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopping.Store(true)
	wg.Wait()
	s.Seconds = time.Since(start).Seconds()
	b, _ := json.Marshal(s)
	fmt.Println(string(b))
	if *out != "" {
		if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func once(ctx context.Context, client *http.Client, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, "", fmt.Errorf("read body: %w", err)
	}
	return resp.StatusCode, string(body), nil
}
