package sql

import "testing"

// BenchmarkMentions: what the relay pays per query for the two scans
// (pgbench -S's query).
func BenchmarkMentions(b *testing.B) {
	q := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;\x00")
	b.Run("rejot", func(b *testing.B) {
		for b.Loop() {
			MentionsRejot(q)
		}
	})
	b.Run("ddl", func(b *testing.B) {
		for b.Loop() {
			MentionsDDL(q)
		}
	})
}
