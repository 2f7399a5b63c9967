package proxy

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestRespHeadAgreesWithNetHTTP checks the hand-written response parser
// against http.ReadResponse: same acceptance, status, framing and body.
func TestRespHeadAgreesWithNetHTTP(t *testing.T) {
	heads := []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\nContent-Length: 99\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: v\r\n\r\n",
		"HTTP/1.1 200 OK\r\n\r\nuntil close",
		"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nraw",
		"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 599 Custom Reason Here\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
		"HTTP/1.1 200 OK\r\nX-Long: " + strings.Repeat("v", 10000) + "\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 099 Low\r\n\r\n",
		"HTTP/2.0 200 OK\r\n\r\n",
		"HTTP/1.1 2000 OK\r\n\r\n",
		"HTTP/1.1 20 OK\r\n\r\n",
		"ICY 200 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
	}
	for _, raw := range heads {
		for _, method := range []string{"GET", "HEAD"} {
			res, nerr := http.ReadResponse(bufio.NewReader(strings.NewReader(raw)), &http.Request{Method: method})
			var nbody []byte
			if nerr == nil {
				nbody, nerr = io.ReadAll(res.Body)
			}
			var h respHead
			br := bufio.NewReaderSize(strings.NewReader(raw), 4096)
			err := readHead(br, &h, method)
			var body []byte
			if err == nil {
				var b respBody
				b.reset(br, &h)
				if h.bodyless(method) {
					b.done = true
				}
				body, err = io.ReadAll(&b)
			}
			if (err == nil) != (nerr == nil) {
				// Stricter is fine where net/http is lenient on framing we
				// reject; the reverse is a bug. Both are listed for review.
				if err == nil {
					t.Errorf("%s %.50q: accepted, net/http says %v", method, raw, nerr)
				} else {
					t.Logf("%s %.50q: rejected (%v), net/http accepts", method, raw, err)
				}
				continue
			}
			if err != nil {
				continue
			}
			if h.status != res.StatusCode || string(body) != string(nbody) || h.close != res.Close {
				t.Errorf("%s %.50q: status %d body %q close %v; net/http %d %q %v", method, raw, h.status, body, h.close, res.StatusCode, nbody, res.Close)
			}
			wantLen := res.ContentLength
			if h.bodyless(method) && method != "HEAD" {
				wantLen = 0
			}
			if got := h.length; !h.bodyless(method) && got != wantLen {
				t.Errorf("%s %.50q: length %d; net/http %d", method, raw, got, wantLen)
			}
		}
	}
}

func FuzzRespHead(f *testing.F) {
	f.Add("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
	f.Add("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: y\r\n\r\n")
	f.Add("HTTP/1.0 200 OK\r\n\r\nbody")
	f.Fuzz(func(t *testing.T, raw string) {
		var h respHead
		br := bufio.NewReaderSize(strings.NewReader(raw), 64)
		if readHead(br, &h, "GET") != nil {
			return
		}
		res, nerr := http.ReadResponse(bufio.NewReader(strings.NewReader(raw)), &http.Request{Method: "GET"})
		if nerr != nil {
			t.Skip("net/http rejects what we accept; framing checked in the table test")
		}
		if res.StatusCode != h.status {
			t.Fatalf("status %d vs net/http %d", h.status, res.StatusCode)
		}
		var b respBody
		b.reset(br, &h)
		if h.bodyless("GET") {
			b.done = true
		}
		body, err := io.ReadAll(&b)
		nbody, nerr := io.ReadAll(res.Body)
		if (err == nil) == (nerr == nil) && err == nil && string(body) != string(nbody) {
			t.Fatalf("body %q vs net/http %q", body, nbody)
		}
	})
}

// BenchmarkReadHead measures parsing a typical upstream response head and
// reading its small body; it should not allocate.
func BenchmarkReadHead(b *testing.B) {
	raw := "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Sat, 21 Nov 2026 20:44:20 GMT\r\n" +
		"X-Upstream: a\r\nContent-Length: 3\r\n\r\nok\n"
	sr := strings.NewReader(raw)
	br := bufio.NewReaderSize(sr, 4096)
	var h respHead
	var body respBody
	buf := make([]byte, 64)
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		sr.Reset(raw)
		br.Reset(sr)
		if err := readHead(br, &h, "GET"); err != nil {
			b.Fatal(err)
		}
		body.reset(br, &h)
		if n, err := body.Read(buf); n != 3 || err != io.EOF {
			b.Fatal(n, err)
		}
	}
}

// BenchmarkNetHTTPReadResponse is the same with http.ReadResponse, for comparison.
func BenchmarkNetHTTPReadResponse(b *testing.B) {
	raw := "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Sat, 21 Nov 2026 20:44:20 GMT\r\n" +
		"X-Upstream: a\r\nContent-Length: 3\r\n\r\nok\n"
	sr := strings.NewReader(raw)
	br := bufio.NewReaderSize(sr, 4096)
	req := &http.Request{Method: "GET"}
	buf := make([]byte, 64)
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		sr.Reset(raw)
		br.Reset(sr)
		res, err := http.ReadResponse(br, req)
		if err != nil {
			b.Fatal(err)
		}
		if n, err := res.Body.Read(buf); n != 3 || err != io.EOF {
			b.Fatal(n, err)
		}
	}
}
