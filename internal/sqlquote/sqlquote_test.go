package sqlquote

import (
	"strings"
	"testing"
)

func TestDollarTag(t *testing.T) {
	tag, err := DollarTag("SELECT 1", "x")
	if err != nil || !strings.HasPrefix(tag, "$rejot_") || !strings.HasSuffix(tag, "$") {
		t.Fatalf("tag %q, %v", tag, err)
	}
	if again, _ := DollarTag("SELECT 1", "x"); again != tag {
		t.Fatalf("the same bodies gave %q and %q", tag, again)
	}
	// A body holding the first tag gets another one.
	other, err := DollarTag("SELECT 1", "x"+tag)
	if err != nil || strings.Contains("x"+tag, other) {
		t.Fatalf("tag %q for a body that holds %q: %v", other, tag, err)
	}
}
