// Package control is the daemon's control API: newline-delimited JSON over a
// Unix stream socket, wire-compatible with the Node.js Rollbridge (spec §7),
// so old CLIs, shell scripts (`socat`, `nc -U`) and the socket probe keep
// working during a migration. This package holds the wire types, request
// decoding, the server (with peer-credential authorization) and the client.
// It imports only the standard library.
package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Commands understood by the daemon (spec §7.3).
const (
	CmdDeploy      = "deploy"
	CmdRollback    = "rollback"
	CmdStatus      = "status"
	CmdEvents      = "events"
	CmdStop        = "stop"
	CmdRestart     = "restart"
	CmdShutdown    = "shutdown"
	CmdRetireOwner = "retire-owner"
	// CmdLogs streams instance output (Go addition, used by logs --follow).
	CmdLogs = "logs"
)

// Request is one decoded control command. Fields not used by a command are
// empty.
type Request struct {
	Command     string `json:"command"`
	ReleasePath string `json:"releasePath,omitempty"`
	ReleaseID   string `json:"releaseId,omitempty"`
	Revision    string `json:"revision,omitempty"`
	ProcessID   string `json:"processId,omitempty"`
	Policy      string `json:"policy,omitempty"`
	Attestation string `json:"attestation,omitempty"`
	// Limit is the events limit, or the logs line count; 0 means "all"
	// (spec §6.9: absent, not a number or <= 0 all mean all).
	Limit int `json:"limit,omitempty"`
	// Follow makes logs stream new lines until the client disconnects.
	Follow bool `json:"follow,omitempty"`
	// Progress makes deploy and rollback stream progress lines before the
	// result (Go addition; without it the reply is the single result line).
	Progress bool `json:"progress,omitempty"`
}

// MaxRequestBytes bounds one request line. The original has no bound
// (spec §11.2-21); real requests are a few hundred bytes.
const MaxRequestBytes = 64 << 10

// requestFields lists each command's string fields and which are required.
var requestFields = map[string][]struct {
	name     string
	required bool
}{
	CmdDeploy:      {{"releasePath", true}, {"releaseId", false}, {"revision", false}},
	CmdRollback:    {{"releaseId", false}},
	CmdStatus:      nil,
	CmdEvents:      nil,
	CmdStop:        {{"releaseId", false}},
	CmdRestart:     {{"processId", false}, {"policy", false}},
	CmdShutdown:    nil,
	CmdRetireOwner: {{"attestation", true}},
	CmdLogs:        {{"processId", false}},
}

// DecodeRequest parses one request line with the original's error texts
// (spec §7.2): invalid JSON names JSON, a non-object is "Control command must
// be an object", an unknown command is "Unknown command: <value>", a missing
// required string is "<field> is required" and a non-string optional field is
// "Expected string value".
func DecodeRequest(line []byte) (Request, error) {
	var raw any
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return Request{}, fmt.Errorf("Invalid JSON in control request: %v", err)
	}
	if dec.More() {
		return Request{}, errors.New("Invalid JSON in control request: unexpected data after the object")
	}
	// Arrays slipped through in the original and ended as "Unknown
	// command: undefined"; here they are rejected like any non-object.
	obj, ok := raw.(map[string]any)
	if !ok {
		return Request{}, errors.New("Control command must be an object")
	}
	cmd, _ := obj["command"].(string)
	fields, known := requestFields[cmd]
	if !known {
		return Request{}, fmt.Errorf("Unknown command: %s", describe(obj["command"]))
	}
	req := Request{Command: cmd}
	for _, f := range fields {
		v, present := obj[f.name]
		s, isString := v.(string)
		switch {
		case f.required && (!isString || s == ""):
			return Request{}, fmt.Errorf("%s is required", f.name)
		case present && v != nil && !isString:
			return Request{}, errors.New("Expected string value")
		}
		req.set(f.name, s)
	}
	if cmd == CmdLogs {
		req.Follow, _ = obj["follow"].(bool)
	}
	if cmd == CmdDeploy || cmd == CmdRollback {
		req.Progress, _ = obj["progress"].(bool)
	}
	if cmd == CmdEvents || cmd == CmdLogs {
		if n, ok := obj["limit"].(json.Number); ok {
			if v, err := n.Int64(); err == nil && v > 0 {
				req.Limit = int(min(v, 1<<31-1))
			}
		}
	}
	return req, nil
}

func (r *Request) set(field, v string) {
	switch field {
	case "releasePath":
		r.ReleasePath = v
	case "releaseId":
		r.ReleaseID = v
	case "revision":
		r.Revision = v
	case "processId":
		r.ProcessID = v
	case "policy":
		r.Policy = v
	case "attestation":
		r.Attestation = v
	}
}

// describe renders an unknown command value like JavaScript's template
// string would (`undefined` when missing).
func describe(v any) string {
	switch t := v.(type) {
	case nil:
		return "undefined"
	case string:
		return t
	default:
		b, _ := json.Marshal(t)
		return string(b)
	}
}

// Success builds a success reply line: {"status":"success", …result fields}.
// result must marshal to a JSON object (or be nil).
func Success(result any) ([]byte, error) {
	body := []byte("{}")
	if result != nil {
		var err error
		if body, err = json.Marshal(result); err != nil {
			return nil, fmt.Errorf("encode reply: %w", err)
		}
	}
	body = bytes.TrimSpace(body)
	if len(body) < 2 || body[0] != '{' {
		return nil, fmt.Errorf("encode reply: result is not a JSON object")
	}
	var b bytes.Buffer
	b.WriteString(`{"status":"success"`)
	if inner := bytes.TrimSpace(body[1 : len(body)-1]); len(inner) > 0 {
		b.WriteByte(',')
		b.Write(inner)
	}
	b.WriteString("}\n")
	return b.Bytes(), nil
}

// Failure builds an error reply line: {"error": msg, "status": "error"}.
func Failure(msg string) []byte {
	b, _ := json.Marshal(struct {
		Error  string `json:"error"`
		Status string `json:"status"`
	}{msg, "error"})
	return append(b, '\n')
}
