package managed

// Statements a rejot call runs through the caller's own session, in the
// caller's transaction, as the caller's role: the call takes effect
// exactly when that transaction commits. Package sql runs them with its
// Session, which sends every parameter as text: hence the casts.
const (
	// LockPublished locks the owner's record of a publication version
	// ($1 publication, $2 version) and returns minor, query,
	// columns::text, description, the latest version of the publication
	// and status; no row when the version was never published.
	LockPublished = `SELECT minor, query, columns::text, description,
			(SELECT max(version) FROM _rejot.publications WHERE publication = $1), status
		FROM _rejot.publications WHERE publication = $1 AND version = $2::int FOR UPDATE`

	// RecordPublished writes the owner's record of a publication version:
	// $1 publication, $2 version, $3 minor, $4 query, $5 source table,
	// $6 key columns (a text[] literal), $7 columns (JSON of []Column),
	// $8 description.
	RecordPublished = `INSERT INTO _rejot.publications
			(publication, version, minor, query, source, key_columns, columns, description, updated_at)
		VALUES ($1, $2::int, $3::int, $4, $5, $6::text[], $7::jsonb, $8, now())
		ON CONFLICT (publication, version) DO UPDATE SET minor = EXCLUDED.minor, query = EXCLUDED.query,
			source = EXCLUDED.source, key_columns = EXCLUDED.key_columns, columns = EXCLUDED.columns,
			description = EXCLUDED.description, updated_at = now()`

	// LockPublishedStatus locks the owner's record of a publication
	// version ($1 publication, $2 version) and returns its status.
	LockPublishedStatus = `SELECT status FROM _rejot.publications WHERE publication = $1 AND version = $2::int FOR UPDATE`

	// SetLifecycle records an unpublish or deprecate in the owner's
	// record: $1 publication, $2 version, $3 status, $4 sunset (a date or
	// NULL), $5 note. It returns the sunset as Postgres normalised it.
	SetLifecycle = `UPDATE _rejot.publications SET status = $3, sunset = $4::date, note = $5, updated_at = now()
		WHERE publication = $1 AND version = $2::int RETURNING sunset::text`

	// InsertCommand appends a command to the outbox ($1 kind, $2 payload
	// as JSON) and notifies ChannelCommands of its id.
	InsertCommand = `WITH c AS (INSERT INTO _rejot.commands (kind, payload) VALUES ($1, $2::jsonb) RETURNING id)
		SELECT id, pg_notify('` + ChannelCommands + `', id::text) FROM c`

	// InsertSubscriptionCommand is InsertCommand for the commands of a
	// subscription, that also notifies ChannelSubscriptions of its target
	// ($3): this database's subscriber acts on it at once.
	InsertSubscriptionCommand = `WITH c AS (INSERT INTO _rejot.commands (kind, payload) VALUES ($1, $2::jsonb) RETURNING id)
		SELECT id, pg_notify('` + ChannelCommands + `', id::text), pg_notify('` + ChannelSubscriptions + `', $3) FROM c`

	// LockSubscriptionRecord locks the subscription into target $1 and
	// returns publication, version::text and status; no row when the
	// target is not subscribed.
	LockSubscriptionRecord = "SELECT publication, version::text, status FROM _rejot.subscriptions WHERE target = $1 FOR UPDATE"

	// InsertSubscription records a new subscription: $1 target (quoted
	// schema.table), $2 schema, $3 table, $4 publication, $5 version,
	// $6 columns (JSON of []SubscribedColumn), $7 whether to copy the state
	// first. It starts copying.
	InsertSubscription = `INSERT INTO _rejot.subscriptions (target, target_schema, target_table, publication, version, columns, copy)
		VALUES ($1, $2, $3, $4, $5::int, $6::jsonb, $7::boolean)`

	// DeleteSubscription removes the subscription into target $1.
	DeleteSubscription = "DELETE FROM _rejot.subscriptions WHERE target = $1"

	// ResyncSubscription starts the subscription into target $1 over: a
	// new generation, copying again. Its worker sees the generation change
	// and stops.
	ResyncSubscription = `UPDATE _rejot.subscriptions SET status = 'copying', position = NULL, copied_rows = 0,
		generation = generation + 1, error = NULL, updated_at = now() WHERE target = $1`
)
