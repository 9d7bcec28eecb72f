package sql

import (
	"context"
	"encoding/json"
	"strconv"

	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
)

// addColumns is a subscribe of a target already subscribed to the same
// version: the columns of chosen it does not have yet (a newer minor
// added them) are recorded to be added; the sidecar's apply adds them to
// the table and fills them as of the subscription's position, in one
// transaction with it, and goes on streaming every column. Nothing to add
// is a no-op. Columns are only ever added: leaving some out of chosen
// removes none.
func addColumns(ctx context.Context, sess Session, t *target, sub *existing, chosen []managed.SubscribedColumn) ([][]any, error) {
	if err := checkTypes(ctx, sess, chosen); err != nil {
		return nil, err
	}
	chosen, err := qualifiedTypes(ctx, sess, chosen)
	if err != nil {
		return nil, err
	}
	wanted, err := json.Marshal(chosen)
	if err != nil {
		return nil, err
	}
	text := string(wanted)
	if _, err := sess.Query(ctx, managed.AddSubscribedColumns, &t.name, &text); err != nil {
		return nil, notManaged(err)
	}
	// rejot.columns and rejot.subscriptions show what follows: the
	// table's new columns appear filled, in one transaction.
	return [][]any{{t.name, sub.Publication, int32(sub.Version), sub.status}}, nil
}

// checkTypes refuses columns whose type this database does not have. The
// type comes from the catalog: only a name Postgres reads as a type of
// this database goes into a statement.
func checkTypes(ctx context.Context, sess Session, cols []managed.SubscribedColumn) error {
	for _, c := range cols {
		rows, err := sess.Query(ctx, "SELECT to_regtype($1)::text", &c.Type)
		if err != nil || rows.Values[0][0] == nil {
			return pgerr.Errorf(pgerr.UndefinedObject, "type %s of column %s does not exist in this database", c.Type, c.Name).
				WithHint("Create the type (with the definition the publisher's database has) before subscribing.")
		}
	}
	return nil
}

// qualifiedTypes names each column's type as it resolves for the caller,
// qualified by its schema (format_type with search_path pg_catalog), so
// that the apply, which adds the columns in its own session, reads the
// same types; and refuses a type the apply will not run the code of: one
// owned by a role other than a superuser or the sidecar's (which owns
// _rejot). The session's search_path is put back.
func qualifiedTypes(ctx context.Context, sess Session, cols []managed.SubscribedColumn) ([]managed.SubscribedColumn, error) {
	old, err := searchPath(ctx, sess)
	if err != nil {
		return nil, err
	}
	out := make([]managed.SubscribedColumn, len(cols))
	for i, c := range cols {
		q, err := qualifyType(ctx, sess, c.Type, old)
		if err != nil {
			return nil, err
		}
		if !q.trusted {
			return nil, pgerr.Errorf(pgerr.InsufficientPrivilege, "type %s of column %s belongs to role %s: the sidecar adds columns only of types of a superuser or its own role, whose code it may run",
				c.Type, c.Name, q.owner).WithHint("Subscribe into a new table, which is created as you.")
		}
		c.Type = q.name
		out[i] = c
	}
	return out, nil
}

// searchPath is the session's search_path.
func searchPath(ctx context.Context, sess Session) (string, error) {
	rows, err := sess.Query(ctx, "SELECT pg_catalog.current_setting('search_path')")
	if err != nil {
		return "", err
	}
	return *rows.Values[0][0], nil
}

// qualifiedType is a type as qualifyType names it.
type qualifiedType struct {
	name    string // format_type's, with search_path pg_catalog
	trusted bool   // it and what it is made of belong to a superuser or the sidecar's role
	owner   string
}

// qualifyType names typ (which checkTypes has made sure is a type name)
// as it resolves for the caller, qualified by its schema; the session's
// search_path is put back to old.
func qualifyType(ctx context.Context, sess Session, typ, old string) (*qualifiedType, error) {
	described, err := sess.Query(ctx, "SELECT NULL::"+typ+" AS t LIMIT 0")
	if err != nil {
		return nil, err
	}
	f := described.Fields[0]
	oid, mod := strconv.FormatUint(uint64(f.TypeOID), 10), strconv.Itoa(int(f.TypeMod))
	if err := setPath(ctx, sess, storedSearchPath); err != nil {
		return nil, err
	}
	typed, err := sess.Query(ctx, qualifiedTypeQuery, &oid, &mod)
	if err != nil {
		return nil, err
	}
	if err := setPath(ctx, sess, old); err != nil {
		return nil, err
	}
	r := typed.Values[0]
	return &qualifiedType{name: *r[0], trusted: *r[1] == "true", owner: *r[2]}, nil
}

// qualifiedTypeQuery: $1 a type's oid, $2 its modifier: its name with
// modifiers as format_type prints it, whether it and the types it is made
// of belong to a superuser or the sidecar's role, and its owner.
const qualifiedTypeQuery = `SELECT pg_catalog.format_type($1::pg_catalog.oid, $2::pg_catalog.int4),
		(NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type u JOIN pg_catalog.pg_roles o ON o.oid = u.typowner
			WHERE u.oid IN (ty.oid, ty.typelem, ty.typbasetype) AND NOT o.rolsuper
			AND o.oid <> (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = '_rejot')))::pg_catalog.text,
		pg_catalog.pg_get_userbyid(ty.typowner)::pg_catalog.text
	FROM pg_catalog.pg_type ty WHERE ty.oid = $1::pg_catalog.oid`
