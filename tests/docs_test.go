package tests

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

var failsWith = regexp.MustCompile(`^-- fails with ([0-9A-Z]{5})`)

// sqlBlocks returns the ```sql blocks of a Markdown file, in order.
func sqlBlocks(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	parts := strings.Split(string(b), "```sql\n")
	for _, p := range parts[1:] {
		end := strings.Index(p, "```")
		if end < 0 {
			t.Fatalf("unterminated sql block in %s", path)
		}
		blocks = append(blocks, p[:end])
	}
	return blocks
}

// TestSQLReferenceExamples runs every example of docs/sql-reference.md, in
// order, through a sidecar: blocks marked "-- fails with CODE" must fail
// with that SQLSTATE, all others must succeed.
func TestSQLReferenceExamples(t *testing.T) {
	p := newPublisher(t)
	blocks := sqlBlocks(t, "../docs/sql-reference.md")
	if len(blocks) < 10 {
		t.Fatalf("only %d examples found", len(blocks))
	}
	for i, block := range blocks {
		_, err := p.conn.PgConn().Exec(context.Background(), block).ReadAll()
		// A call reaches the catalog just after it commits (the page says
		// so): a subscription right after its publication may retry.
		for deadline := time.Now().Add(15 * time.Second); err != nil && pgErr(err).Code == "42704" &&
			failsWith.FindStringSubmatch(block) == nil && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			_, err = p.conn.PgConn().Exec(context.Background(), block).ReadAll()
		}
		if m := failsWith.FindStringSubmatch(block); m != nil {
			if pgErr(err).Code != m[1] {
				t.Errorf("example %d should fail with %s, got %v:\n%s", i+1, m[1], err, block)
			}
			continue
		}
		if err != nil {
			t.Errorf("example %d failed: %v\n%s", i+1, err, block)
		}
	}
}
