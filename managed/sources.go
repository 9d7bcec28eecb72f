package managed

// CapturedVersions is the statement that reads what the owner's capture
// has to capture: every publication version of the owner's record not
// retired, by publication and version, as publication, version, query,
// key_columns, the schema and name of its source table (resolved now: a
// version whose table is gone is left out) and the names of its recorded
// columns, in their recorded order. It fails with NotInstalled before
// _rejot is there.
const CapturedVersions = `SELECT p.publication, p.version, p.query, p.key_columns, n.nspname, c.relname,
			ARRAY(SELECT x->>'name' FROM jsonb_array_elements(p.columns) AS x)
		FROM _rejot.publications p
		JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(p.source)
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE p.status <> 'retired' ORDER BY p.publication, p.version`
