package managed

// CapturedVersions is the statement that reads what the owner's capture
// has to capture: every publication version of the owner's record not
// retired, by publication and version, as publication, version, query,
// key_columns, the schema and name of its source table (resolved now:
// NULL for a version whose table is gone: dropped, or renamed away from
// the name it was published with), the names of its recorded columns in
// their recorded order, the role its projection runs as, whether the
// capture's role may become it (SET ROLE), the recorded columns' type
// OIDs and modifiers (0 and -1 where a record predates them) and the
// table as it was published, the columns it reads by identity as
// recorded (JSON: [{attnum, name, type, typmod}], empty for a version
// recorded before migration 009) and those of them renamed since (JSON:
// {recorded name: name now}). It fails with NotInstalled before _rejot
// is there.
//
// The role is the caller that recorded the version; a version recorded
// before callers were (migration 004) runs as the owner of its table, of
// which its publisher had to be a member.
const CapturedVersions = `SELECT p.publication, p.version, p.query, p.key_columns, n.nspname, c.relname,
			ARRAY(SELECT x->>'name' FROM jsonb_array_elements(p.columns) AS x),
			r.rolname::text, coalesce(pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER'), false),
			ARRAY(SELECT coalesce((x->>'type_oid')::oid, 0) FROM jsonb_array_elements(p.columns) AS x),
			ARRAY(SELECT coalesce((x->>'type_mod')::int4, -1) FROM jsonb_array_elements(p.columns) AS x),
			p.source,
			coalesce(p.reads, '[]')::text,
			coalesce((SELECT pg_catalog.jsonb_object_agg(x->>'name', a.attname)
				FROM pg_catalog.jsonb_array_elements(p.reads) AS x
				JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = (x->>'attnum')::int2 AND NOT a.attisdropped
				WHERE a.attname::text <> x->>'name'), '{}')::text
		FROM _rejot.publications p
		LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(p.source)
		LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_catalog.pg_roles r ON r.rolname = coalesce(p.caller, pg_catalog.pg_get_userbyid(c.relowner))
		WHERE p.status <> 'retired' ORDER BY p.publication, p.version`
