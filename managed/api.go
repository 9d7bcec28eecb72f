package managed

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// APISchema is the API's namespace. In a managed database the sidecar
// keeps there the signposts of api.sql: the API's routines and relations,
// visible to psql, each of which only raises when the database itself is
// asked (the sidecar answers them).
const APISchema = "rejot"

//go:embed api.sql
var apiSQL string

// apiDigest names the signposts' text: a schema rejot recorded with
// another is rebuilt.
var apiDigest = func() string {
	sum := sha256.Sum256([]byte(apiSQL))
	return hex.EncodeToString(sum[:])
}()

// ForeignAPIError: a schema rejot exists in the managed database that the
// sidecar did not make (a user's, a restored dump's), or that holds
// another role's objects. The sidecar leaves it as it is: the API works
// through the sidecar all the same, but psql shows that schema, not the
// API's signposts.
type ForeignAPIError struct {
	Object string // "schema rejot", "view rejot.publications", …
	Owner  string
	Made   bool // the sidecar made the schema; Object was changed since
}

func (e *ForeignAPIError) Error() string {
	why := "the sidecar did not make it"
	if e.Made {
		why = "it holds what the sidecar did not make"
	}
	return fmt.Sprintf("schema %s exists and is not the sidecar's (%s; %s belongs to role %q): the sidecar leaves it alone, "+
		"so psql does not show the ReJot API in this database (the API works through the sidecar all the same). "+
		"If nothing in it is needed, drop it (DROP SCHEMA %s CASCADE) and the sidecar makes its own when it next connects",
		APISchema, why, e.Object, e.Owner, APISchema)
}

const (
	// apiState is schema rejot (oid, or NULL when there is none) and
	// what _rejot.api recorded of the one the sidecar made. The lock
	// makes sidecars that start together take turns; only the sidecar's
	// role may take it.
	apiLock  = `LOCK TABLE _rejot.api IN EXCLUSIVE MODE`
	apiState = `SELECT n.oid, pg_catalog.pg_get_userbyid(n.nspowner)::text, a.schema_oid, a.digest,
			EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'rejot_catalog')
		FROM (SELECT 1) AS one
		LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = '` + APISchema + `'
		LEFT JOIN _rejot.api a ON true`
	// The signposts are rebuilt whole: what depends on them elsewhere
	// (they have no rows to depend on) goes with them.
	apiDrop   = `DROP SCHEMA ` + APISchema + ` CASCADE`
	apiCreate = `CREATE SCHEMA ` + APISchema
	apiRecord = `INSERT INTO _rejot.api (schema_oid, digest)
		SELECT oid, $1 FROM pg_catalog.pg_namespace WHERE nspname = '` + APISchema + `'
		ON CONFLICT (one) DO UPDATE SET schema_oid = EXCLUDED.schema_oid, digest = EXCLUDED.digest, installed_at = now()`
)

// InstallAPI makes or updates schema rejot's signposts in the managed
// database, after Install. It changes nothing when a schema rejot is
// there that the sidecar did not make, or that holds another role's
// objects: a *ForeignAPIError says so. Nor in a database that holds the
// catalog (schema rejot_catalog): there schema rejot is the catalog's.
func InstallAPI(ctx context.Context, conn *pgx.Conn) error {
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, apiLock); err != nil {
			return err
		}
		var nsp, recorded *uint32
		var owner, digest *string
		var catalogHere bool
		if err := tx.QueryRow(ctx, apiState).Scan(&nsp, &owner, &recorded, &digest, &catalogHere); err != nil {
			return err
		}
		if catalogHere {
			// The database holds the catalog itself: its schema rejot
			// has the catalog's own views, made by the catalog's
			// migrations, which a schema made here would stop.
			return nil
		}
		if nsp != nil {
			if recorded == nil || *recorded != *nsp {
				return &ForeignAPIError{Object: "schema " + APISchema, Owner: *owner}
			}
			if err := apiOwned(ctx, tx); err != nil {
				return err
			}
			if digest != nil && *digest == apiDigest {
				return nil
			}
			if _, err := tx.Exec(ctx, apiDrop); err != nil {
				return err
			}
		}
		return createAPI(ctx, tx)
	})
	var foreign *ForeignAPIError
	if err != nil && !errors.As(err, &foreign) {
		return fmt.Errorf("cannot install schema %s: %w", APISchema, err)
	}
	return err
}

func createAPI(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, apiCreate); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, apiSQL); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, apiRecord, apiDigest)
	return err
}

// apiOwned refuses a schema rejot that the sidecar made but that now
// belongs to, or holds objects of, a role the sidecar's is not: dropping
// it would drop what someone else made.
func apiOwned(ctx context.Context, q Querier) error {
	var e ForeignError
	err := q.QueryRow(ctx, ownedQuery(APISchema)).Scan(&e.Object, &e.Owner, &e.Role)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	return &ForeignAPIError{Object: e.Object, Owner: e.Owner, Made: true}
}
