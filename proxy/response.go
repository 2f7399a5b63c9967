package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"strconv"
)

// respHead is a parsed upstream response head. It replaces http.ReadResponse
// on the hot path: the head is copied once into a buffer the connection
// reuses, and the fields are slices of it, so parsing allocates nothing.
// Fields are relayed as received (names are not canonicalized).
type respHead struct {
	raw    []byte  // the head, line endings stripped, lines back to back
	status int     // status code
	reason []byte  // reason phrase (may be empty)
	fields []field // header fields in order

	http10    bool
	length    int64 // body length from Content-Length, -1 if none
	chunked   bool
	close     bool // the upstream will close after this response
	keepAlive bool // Connection: keep-alive (matters for HTTP/1.0)
	hasDate   bool
	upgradeWS bool     // Upgrade: websocket
	dropped   [][]byte // names listed in Connection, dropped when relaying
}

// field is one header field; flags classify the names the proxy handles.
type field struct {
	name, value []byte
	kind        fieldKind
}

type fieldKind uint8

const (
	fieldPlain         fieldKind = iota
	fieldHop                     // hop-by-hop: never relayed
	fieldContentLength           // relayed unless the body is chunked
	fieldTrailer                 // relayed only with a chunked body
)

// maxResponseHead bounds an upstream's response head.
const maxResponseHead = 1 << 20

var errMalformedResponse = errors.New("malformed upstream response")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errMalformedResponse}, args...)...)
}

// readHead reads the next final response head (interim 1xx responses other
// than 101 are skipped, as net/http's transport does).
func readHead(br *bufio.Reader, h *respHead, method string) error {
	for {
		if err := h.read(br, method); err != nil {
			return err
		}
		if h.status >= 200 || h.status == http.StatusSwitchingProtocols {
			return nil
		}
	}
}

func (h *respHead) read(br *bufio.Reader, method string) error {
	h.raw = h.raw[:0]
	h.fields = h.fields[:0]
	h.dropped = h.dropped[:0]
	*h = respHead{raw: h.raw, fields: h.fields, dropped: h.dropped, length: -1}

	// Lines are appended to raw first and sliced afterwards: appending may
	// move raw, so offsets are kept until the head is complete.
	type span struct{ start, end int }
	var spans [32]span
	lines := spans[:0]
	for {
		start := len(h.raw)
		if err := appendLine(br, &h.raw); err != nil {
			if len(lines) == 0 && start == 0 && errors.Is(err, io.EOF) {
				return io.EOF
			}
			return err
		}
		if len(h.raw)-start > maxResponseHead || len(h.raw) > maxResponseHead {
			return malformed("response head larger than %d bytes", maxResponseHead)
		}
		if len(h.raw) == start && len(lines) > 0 {
			break // the empty line ends the head
		}
		lines = append(lines, span{start, len(h.raw)})
	}
	if len(lines) == 0 {
		return malformed("empty status line")
	}
	if err := h.parseStatus(h.raw[lines[0].start:lines[0].end]); err != nil {
		return err
	}
	var lengthsBuf, teBuf [2][]byte
	lengths, te := lengthsBuf[:0], teBuf[:0]
	for _, s := range lines[1:] {
		line := h.raw[s.start:s.end]
		if line[0] == ' ' || line[0] == '\t' {
			// RFC 9112 §5.2: obsolete line folding may be rejected.
			return malformed("folded header line")
		}
		i := bytes.IndexByte(line, ':')
		if i <= 0 || !validFieldName(line[:i]) {
			return malformed("invalid header line %q", line)
		}
		f := field{name: line[:i], value: trimOWS(line[i+1:])}
		if !validFieldValue(f.value) {
			return malformed("invalid value in header %q", f.name)
		}
		switch {
		case fieldIs(f.name, "Content-Length"):
			f.kind = fieldContentLength
			lengths = append(lengths, f.value)
		case fieldIs(f.name, "Transfer-Encoding"):
			f.kind = fieldHop
			te = append(te, f.value)
		case fieldIs(f.name, "Connection"):
			f.kind = fieldHop
			h.connection(f.value)
		case fieldIs(f.name, "Upgrade"):
			f.kind = fieldHop
			h.upgradeWS = h.upgradeWS || hasToken([]string{string(f.value)}, "websocket")
		case fieldIs(f.name, "Trailer"):
			f.kind = fieldTrailer
		case fieldIs(f.name, "Date"):
			h.hasDate = true
		case isHopByHopName(f.name):
			f.kind = fieldHop
		}
		h.fields = append(h.fields, f)
	}
	for i := range h.fields {
		for _, d := range h.dropped {
			if bytes.EqualFold(h.fields[i].name, d) {
				h.fields[i].kind = fieldHop
			}
		}
	}
	return h.frame(method, lengths, te)
}

// frame decides the body framing as net/http's readTransfer does (RFC 9112
// §6.3), including its hardening against ambiguous lengths.
func (h *respHead) frame(method string, lengths, te [][]byte) error {
	if h.http10 {
		h.close = h.close || !h.keepAlive
		te = nil // HTTP/1.0 has no transfer codings
	}
	if len(te) > 0 {
		if len(te) != 1 || !bytes.EqualFold(te[0], []byte("chunked")) {
			return malformed("unsupported transfer encoding %q", string(bytes.Join(te, []byte(", "))))
		}
		h.chunked = true
	}
	if len(lengths) > 0 {
		for _, l := range lengths[1:] {
			if !bytes.Equal(l, lengths[0]) {
				return malformed("conflicting Content-Length headers %q and %q", string(lengths[0]), string(l))
			}
		}
		n, err := strconv.ParseUint(string(lengths[0]), 10, 63)
		if err != nil {
			return malformed("invalid Content-Length %q", string(lengths[0]))
		}
		h.length = int64(n)
		// Relay one Content-Length only.
		seen := false
		for i := range h.fields {
			if h.fields[i].kind == fieldContentLength {
				if seen {
					h.fields[i].kind = fieldHop
				}
				seen = true
			}
		}
	}
	switch {
	case h.bodyless(method):
		// Content-Length, if any, describes what a GET would return; it is relayed.
		h.chunked = false
	case h.chunked:
		h.length = -1
		for i := range h.fields {
			if h.fields[i].kind == fieldContentLength {
				h.fields[i].kind = fieldHop // chunked overrides a length (RFC 9112 §6.3)
			}
		}
	case h.length < 0:
		h.close = true // the body ends when the upstream closes
	}
	return nil
}

func (h *respHead) bodyless(method string) bool {
	return method == http.MethodHead || h.status < 200 || h.status == http.StatusNoContent || h.status == http.StatusNotModified
}

func (h *respHead) parseStatus(line []byte) error {
	// HTTP-version SP 3DIGIT [SP reason-phrase]
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return malformed("invalid status line %q", line)
	}
	switch line[7] {
	case '0':
		h.http10 = true
	case '1':
	default:
		return malformed("unsupported protocol in %q", line)
	}
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return malformed("invalid status code in %q", line)
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 {
		return malformed("invalid status code in %q", line)
	}
	h.status = code
	if len(line) > 12 {
		if line[12] != ' ' {
			return malformed("invalid status line %q", line)
		}
		h.reason = line[13:]
	}
	return nil
}

func (h *respHead) connection(v []byte) {
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			tok, v = v, nil
		}
		tok = trimOWS(tok)
		switch {
		case len(tok) == 0:
		case bytes.EqualFold(tok, []byte("close")):
			h.close = true
		case bytes.EqualFold(tok, []byte("keep-alive")):
			h.keepAlive = true
		case bytes.EqualFold(tok, []byte("upgrade")):
		default:
			h.dropped = append(h.dropped, tok)
		}
	}
}

// appendLine appends the next line to buf without its line ending,
// handling lines longer than the reader's buffer.
func appendLine(br *bufio.Reader, buf *[]byte) error {
	start := len(*buf)
	for {
		frag, err := br.ReadSlice('\n')
		*buf = append(*buf, frag...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			if err == io.EOF && len(frag) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if len(*buf) > maxResponseHead {
			return malformed("response head larger than %d bytes", maxResponseHead)
		}
	}
	b := *buf
	b = b[:len(b)-1]
	if len(b) > start && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	*buf = b
	return nil
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// validFieldName reports an RFC 9110 token.
func validFieldName(b []byte) bool {
	for _, c := range b {
		if !isTokenByte(c) {
			return false
		}
	}
	return len(b) > 0
}

func isTokenByte(c byte) bool { return tokenBytes[c] }

// tokenBytes marks the tchar bytes of RFC 9110 §5.6.2.
var tokenBytes = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range []byte("!#$%&'*+-.^_`|~") {
		t[c] = true
	}
	return t
}()

// validFieldValue rejects control characters other than HTAB.
func validFieldValue(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

func fieldIs(name []byte, canonical string) bool {
	return len(name) == len(canonical) && bytes.EqualFold(name, []byte(canonical))
}

func isHopByHopName(name []byte) bool {
	switch len(name) {
	case 2:
		return fieldIs(name, "Te")
	case 10:
		return fieldIs(name, "Keep-Alive")
	case 16:
		return fieldIs(name, "Proxy-Connection")
	case 18:
		return fieldIs(name, "Proxy-Authenticate")
	case 19:
		return fieldIs(name, "Proxy-Authorization")
	}
	return false
}

// respBody reads a response body as the head framed it.
type respBody struct {
	br      *bufio.Reader
	left    int64     // bytes left of a Content-Length body
	chunks  io.Reader // decoder of a chunked body, else nil
	toClose bool      // read until the upstream closes
	trailer respHead  // trailer fields of a chunked body (fields only)
	done    bool
}

func (b *respBody) reset(br *bufio.Reader, h *respHead) {
	b.br, b.left, b.chunks, b.toClose, b.done = br, 0, nil, false, false
	b.trailer.fields = b.trailer.fields[:0]
	b.trailer.raw = b.trailer.raw[:0]
	switch {
	case h.chunked:
		b.chunks = httputil.NewChunkedReader(br)
	case h.length >= 0:
		b.left = h.length
	default:
		b.toClose = true
	}
}

// Read returns io.EOF with the last bytes of a sized body, so a small body
// needs one call.
func (b *respBody) Read(p []byte) (int, error) {
	switch {
	case b.done:
		return 0, io.EOF
	case b.chunks != nil:
		n, err := b.chunks.Read(p)
		if err == io.EOF {
			if terr := b.readTrailer(); terr != nil {
				return n, terr
			}
			b.done = true
		}
		return n, err
	case b.toClose:
		return b.br.Read(p)
	}
	if b.left == 0 {
		b.done = true
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	if b.left == 0 {
		b.done = true
		return n, io.EOF
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// readTrailer reads the trailer section after the last chunk.
func (b *respBody) readTrailer() error {
	t := &b.trailer
	type span struct{ start, end int }
	var spans [8]span
	lines := spans[:0]
	for {
		start := len(t.raw)
		if err := appendLine(b.br, &t.raw); err != nil {
			return err
		}
		if len(t.raw) == start {
			break
		}
		if len(t.raw) > maxResponseHead {
			return malformed("trailer larger than %d bytes", maxResponseHead)
		}
		lines = append(lines, span{start, len(t.raw)})
	}
	for _, s := range lines {
		line := t.raw[s.start:s.end]
		i := bytes.IndexByte(line, ':')
		if i <= 0 || !validFieldName(line[:i]) {
			return malformed("invalid trailer line %q", line)
		}
		f := field{name: line[:i], value: trimOWS(line[i+1:])}
		if !validFieldValue(f.value) {
			return malformed("invalid trailer value in %q", f.name)
		}
		// Framing fields may not come as trailers (RFC 9110 §6.5.1).
		if fieldIs(f.name, "Content-Length") || fieldIs(f.name, "Transfer-Encoding") || fieldIs(f.name, "Trailer") {
			continue
		}
		t.fields = append(t.fields, f)
	}
	return nil
}
