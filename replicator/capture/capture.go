// Package capture is the owner's side of ReJot: it turns what changes in an
// owner's tables into groups of changes to its publication versions in the
// event log, exactly as of each source transaction.
//
// A Runner keeps a WALReader running for the versions the owner's record
// holds (runner.go). A WALReader keeps the slot and the Postgres
// publication (walreader.go), fills a new version's first state from a
// snapshot (fill.go), then runs a replication session (session.go) that
// decodes pgoutput into transactions (decode.go), projects their rows with
// Postgres itself (changes.go, projection.go), fills in unchanged TOAST
// values (toast.go) and appends in batches (batch.go); only once an append
// is durable does the slot hear it may forget. The paced reader of the
// replication socket is its own package, paced.
package capture
