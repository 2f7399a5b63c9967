package config

import (
	"encoding/json"
	"errors"
	"fmt"
)

// kind is the JavaScript type of a value exported from the config module.
type kind int

const (
	kindUndefined kind = iota
	kindNull
	kindBool
	kindNumber
	kindNonFinite // NaN, Infinity, -Infinity: typeof "number" but rejected as numbers
	kindString
	kindArray
	kindObject
	kindFunction
	kindOther // bigint, symbol, or a value nested deeper than the export walker follows
)

// value is a plain Go copy of a JavaScript value. Normalization works on this
// tree only, so it never calls back into the JavaScript runtime (no getters,
// no proxies, no unbounded work).
type value struct {
	kind   kind
	bool   bool
	num    float64
	str    string
	items  []*value          // kindArray
	keys   []string          // kindObject, in JavaScript property order
	fields map[string]*value // kindObject
}

var undefinedValue = &value{kind: kindUndefined}

// get returns the named property of an object, or undefined.
func (v *value) get(key string) *value {
	if v == nil || v.kind != kindObject {
		return undefinedValue
	}
	if f, ok := v.fields[key]; ok {
		return f
	}
	return undefinedValue
}

// unset reports whether v is missing, undefined or null (spec §2.1: null is
// the same as "not set").
func (v *value) unset() bool {
	return v == nil || v.kind == kindUndefined || v.kind == kindNull
}

func (v *value) isObject() bool { return v != nil && v.kind == kindObject }

// decodeExport turns the tagged JSON produced by exportWalker (see eval.go)
// into a value tree. The tags are: ["u"] undefined, ["z"] null, ["b", bool],
// ["n", number], ["N", "NaN"|"Infinity"|…], ["s", string], ["a", [items]],
// ["o", [[key, item], …]], ["f"] function, ["x", what] other.
func decodeExport(data []byte) (*value, error) {
	var raw json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("decode exported config: %w", err)
	}
	return decodeTagged(raw)
}

func decodeTagged(raw json.RawMessage) (*value, error) {
	var parts []json.RawMessage
	if err := json.Unmarshal(raw, &parts); err != nil || len(parts) == 0 {
		return nil, errors.New("decode exported config: malformed node")
	}
	var tag string
	if err := json.Unmarshal(parts[0], &tag); err != nil {
		return nil, errors.New("decode exported config: malformed tag")
	}
	arg := func(dst any) error {
		if len(parts) < 2 {
			return fmt.Errorf("decode exported config: tag %q without payload", tag)
		}
		if err := json.Unmarshal(parts[1], dst); err != nil {
			return fmt.Errorf("decode exported config: tag %q: %w", tag, err)
		}
		return nil
	}
	switch tag {
	case "u":
		return &value{kind: kindUndefined}, nil
	case "z":
		return &value{kind: kindNull}, nil
	case "f":
		return &value{kind: kindFunction}, nil
	case "x", "d":
		return &value{kind: kindOther}, nil
	case "b":
		v := &value{kind: kindBool}
		return v, arg(&v.bool)
	case "n":
		v := &value{kind: kindNumber}
		return v, arg(&v.num)
	case "N":
		v := &value{kind: kindNonFinite}
		return v, arg(&v.str)
	case "s":
		v := &value{kind: kindString}
		return v, arg(&v.str)
	case "a":
		var items []json.RawMessage
		if err := arg(&items); err != nil {
			return nil, err
		}
		v := &value{kind: kindArray, items: make([]*value, 0, len(items))}
		for _, it := range items {
			child, err := decodeTagged(it)
			if err != nil {
				return nil, err
			}
			v.items = append(v.items, child)
		}
		return v, nil
	case "o":
		var pairs [][2]json.RawMessage
		if err := arg(&pairs); err != nil {
			return nil, err
		}
		v := &value{kind: kindObject, fields: make(map[string]*value, len(pairs))}
		for _, p := range pairs {
			var key string
			if err := json.Unmarshal(p[0], &key); err != nil {
				return nil, fmt.Errorf("decode exported config: key: %w", err)
			}
			child, err := decodeTagged(p[1])
			if err != nil {
				return nil, err
			}
			if _, dup := v.fields[key]; !dup {
				v.keys = append(v.keys, key)
			}
			v.fields[key] = child
		}
		return v, nil
	}
	return nil, fmt.Errorf("decode exported config: unknown tag %q", tag)
}
