// Package sql understands the SQL that reaches a sidecar: it recognises
// statements that call the rejot API (cheaply: text that never mentions
// "rejot" is never parsed), splits multi-statement strings with Postgres's
// own parser, binds call arguments (positional, named, $n parameters) to the
// API's functions, runs the calls and reports failures as Postgres errors with
// SQLSTATEs and positions. It does not talk to the network: whatever a call
// needs from the caller's database it asks of a Session.
package sql
