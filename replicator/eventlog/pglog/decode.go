package pglog

import (
	"encoding/json"
	"strings"
	"unicode/utf8"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// decodeValues reads a JSON array of strings and nulls as the log writes
// it (appendJSON; jsonb prints the same): ["a", null, "b"]. Strings
// without escapes are taken as they are; anything else unusual goes to
// encoding/json, which has the last word on what is valid.
func decodeValues(s string) ([]eventlog.Value, error) {
	if vals, ok := decodeSimple(s); ok {
		return vals, nil
	}
	var vals []eventlog.Value
	err := json.Unmarshal([]byte(s), &vals)
	return vals, err
}

// decodeSimple handles the common case: valid UTF-8 strings without
// backslashes or control characters, and nulls, separated by ", " or ",". ok is false
// for anything else.
func decodeSimple(s string) (vals []eventlog.Value, ok bool) {
	if len(s) < 2 || s[0] != '[' || s[len(s)-1] != ']' {
		return nil, false
	}
	body := s[1 : len(s)-1]
	if body == "" {
		return []eventlog.Value{}, true
	}
	vals = make([]eventlog.Value, 0, 1+strings.Count(body, ","))
	for {
		switch {
		case strings.HasPrefix(body, "null"):
			vals = append(vals, nil)
			body = body[4:]
		case strings.HasPrefix(body, `"`):
			end := 1
			for end < len(body) && body[end] != '"' {
				if c := body[end]; c == '\\' || c < 0x20 {
					return nil, false
				}
				end++
			}
			if end == len(body) {
				return nil, false
			}
			v := body[1:end]
			if !utf8.ValidString(v) {
				return nil, false
			}
			vals = append(vals, &v)
			body = body[end+1:]
		default:
			return nil, false
		}
		if body == "" {
			return vals, true
		}
		switch {
		case strings.HasPrefix(body, ", "):
			body = body[2:]
		case strings.HasPrefix(body, ","):
			body = body[1:]
		default:
			return nil, false
		}
		if body == "" {
			return nil, false // a trailing comma
		}
	}
}
