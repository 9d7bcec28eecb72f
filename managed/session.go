package managed

// Statements a rejot call runs through the caller's own session, in the
// caller's transaction: the call takes effect exactly when that
// transaction commits. Each calls a SECURITY DEFINER function of _rejot
// (migrations/004_private.sql), the only way any role but the sidecar's
// reaches _rejot: the function acts for current_user (evaluated in the
// caller's session, and refused with 42501 unless the session may SET
// ROLE to it), records it as the caller, and refuses with 42501 what that
// role may not do, so that calling the functions directly, not through
// the sidecar, is harmless. The functions that record intent also write
// its outbox command, with a payload made of what they recorded, and
// notify ChannelCommands (and ChannelSubscriptions for a subscription).
// Package sql runs them with its Session, which sends every parameter as
// text: hence the casts.
const (
	// LockVersion serialises publishes of one version until the caller's
	// transaction ends: $1 publication, $2 version, $3 the source table
	// (schema-qualified, quoted). Refused (42501) unless the caller may
	// publish from that table, and change the version when it exists.
	LockVersion = `SELECT _rejot.lock_version(current_user, $1, $2::int, $3)`

	// LockTarget serialises subscribe, unsubscribe and resync of one
	// target until the caller's transaction ends: $1 its schema, $2 its
	// table. Refused (42501) unless the caller owns the table, or may
	// create it while it does not exist.
	LockTarget = `SELECT _rejot.lock_target(current_user, $1, $2)`

	// LockPublished locks the owner's record of a publication version
	// ($1 publication, $2 version) and returns minor, query,
	// columns::text, description, the latest version of the publication
	// and status; no row when the version was never published. An
	// existing version is refused (42501) unless the caller is a member
	// of the role that owns its table and of the role that recorded it.
	LockPublished = `SELECT minor, query, columns, description, latest, status
		FROM _rejot.lock_published(current_user, $1, $2::int)`

	// RecordPublished writes the owner's record of a publication version
	// and its publish command: $1 publication, $2 version, $3 minor,
	// $4 query, $5 source table (schema-qualified, quoted), $6 key
	// columns (a text[] literal), $7 columns (JSON of []Column),
	// $8 description, $9 the owner's system and $10 its database (ignored
	// since migration 006: the payload names current_database()). It
	// returns the command's id. The caller must be a member of the role
	// that owns the source table, and the sidecar's role a member of the
	// caller, whom the capture runs the projection as (42501); the source
	// is recorded as resolved now.
	RecordPublished = `SELECT _rejot.record_published(current_user, $1, $2::int, $3::int, $4, $5, $6::text[], $7::jsonb, $8, $9, $10)`

	// RecordPublishedTables is RecordPublished with $11 every table the
	// version reads (a text[] literal of schema-qualified names, the
	// source first): the owner must own each, and the record and the
	// command keep them as resolved (migration 013).
	RecordPublishedTables = `SELECT _rejot.record_published(current_user, $1, $2::int, $3::int, $4, $5, $6::text[], $7::jsonb, $8, $9, $10, $11::text[])`

	// RecordReads records the columns a recorded version reads ($1
	// publication, $2 version, $3 their names, a text[] literal) by
	// identity (attnum and type), as its table has them now: what a DDL
	// statement is checked against when it commits (GuardContract).
	RecordReads = `SELECT _rejot.record_reads(current_user, $1, $2::int, $3::text[])`

	// RecordJoinedReads records the columns a recorded join version reads
	// of its joined tables ($1 publication, $2 version, $3 a JSON array
	// of {"table": name as recorded, "columns": [names]}; [] for a
	// one-table version) by identity and name: the capture matches a
	// joined table's columns by name, so a rename breaks the version too.
	RecordJoinedReads = `SELECT _rejot.record_joined_reads(current_user, $1, $2::int, $3::jsonb)`

	// GuardContract, sent in a transaction before a DDL statement that
	// could break a published version, has the transaction checked when it
	// commits: it is refused (2BP01) if a version it broke was not
	// re-published (or retired) in it.
	GuardContract = `SELECT _rejot.guard_contract()`

	// LockPublishedStatus locks the owner's record of a publication
	// version ($1 publication, $2 version) and returns its status; no row
	// when the version was never published. Refused as LockPublished.
	LockPublishedStatus = `SELECT status FROM _rejot.lock_published_status(current_user, $1, $2::int)`

	// SetLifecycle records an unpublish or deprecate in the owner's
	// record, and its command (unpublish for status retired, deprecate for
	// deprecated): $1 publication, $2 version, $3 status, $4 sunset (a
	// date or NULL), $5 note. It returns the sunset as Postgres
	// normalised it. A retired version stays retired (55000).
	SetLifecycle = `SELECT _rejot.set_lifecycle(current_user, $1, $2::int, $3, $4::date, $5)`

	// SetAccess grants ($4 true) or revokes ($4 false) system $3 access to
	// publication $1 version $2, in the owner's record, and records its
	// grant or revoke command (payload Access); it returns who may
	// subscribe afterwards: restricted::text and the granted systems
	// (text[]). The first grant restricts the version to the granted
	// systems; granting '*' opens it to every system again; revoking from
	// an open version is refused (55000). Refused (42501) as
	// LockPublished; a retired version is refused (55000).
	SetAccess = `SELECT restricted::text, granted::text FROM _rejot.set_access(current_user, $1, $2::int, $3, $4::boolean)`

	// LockSubscriptionRecord locks the subscription into target $1 and
	// returns publication, version::text and status; no row when the
	// target is not subscribed. Refused (42501) unless the caller owns
	// the target (by membership).
	LockSubscriptionRecord = "SELECT publication, version::text, status FROM _rejot.lock_subscription(current_user, $1)"

	// InsertSubscription records a new subscription and its subscribe
	// command: $1 target (quoted schema.table), $2 schema, $3 table,
	// $4 publication, $5 version, $6 columns (JSON of
	// []SubscribedColumn), $7 whether to copy the state first. It starts
	// copying, and returns the command's id. The table must exist, be
	// owned by the caller (by membership) and be named by $1 exactly as
	// Postgres names it (format('%I.%I')); the columns must be its own.
	InsertSubscription = `SELECT _rejot.insert_subscription(current_user, $1, $2, $3, $4, $5::int, $6::jsonb, $7::boolean)`

	// DeleteSubscription removes the subscription into target $1 and
	// records its unsubscribe command. Refused as LockSubscriptionRecord.
	DeleteSubscription = "SELECT _rejot.delete_subscription(current_user, $1)"

	// ResyncSubscription starts the subscription into target $1 over: a
	// new generation, copying again; and records its resync command. Its
	// worker sees the generation change and stops. Refused as
	// LockSubscriptionRecord.
	ResyncSubscription = "SELECT _rejot.resync_subscription(current_user, $1)"

	// AddSubscribedColumns adds to the subscription into target $1 the
	// columns of $2 (JSON of []SubscribedColumn, the version's columns
	// the caller wants) it does not have, marked Adding, in a new
	// generation that keeps the position, and returns their names as a
	// text array (empty: nothing changed). Refused (42501) unless the
	// caller owns the target and the sidecar's role may alter it
	// (migration 010).
	AddSubscribedColumns = "SELECT _rejot.add_subscribed_columns(current_user, $1, $2::jsonb)::text"
)
