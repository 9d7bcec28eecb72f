// Package sqlquote quotes text the sidecar places in SQL it builds as a
// dollar-quoted string: a function's body, a check over expressions.
package sqlquote

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
)

// DollarTag is a dollar-quote tag ($rejot_…$) that none of bodies
// contains, so $tag$body$tag$ is body as one string constant. The tag
// is derived from the bodies: the same bodies give the same SQL.
func DollarTag(bodies ...string) (string, error) {
	h := sha256.New()
	for _, b := range bodies {
		h.Write([]byte(b))
		h.Write([]byte{0})
	}
	sum := h.Sum(nil)
	for i := 0; i+8 <= len(sum); i += 8 {
		tag := "$rejot_" + hex.EncodeToString(sum[i:i+8]) + "$"
		if !containsAny(bodies, tag) {
			return tag, nil
		}
	}
	return "", errors.New("cannot dollar-quote the text: it contains every candidate tag")
}

func containsAny(bodies []string, tag string) bool {
	for _, b := range bodies {
		if strings.Contains(b, tag) {
			return true
		}
	}
	return false
}
