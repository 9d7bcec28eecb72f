package sql

import (
	"context"
	"slices"
	"strconv"
	"strings"

	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
)

// Access of a version that every system may subscribe to.
const accessOpen = "open"

func grantFunction() *Function  { return accessFunction("grant", true) }
func revokeFunction() *Function { return accessFunction("revoke", false) }

// accessFunction is rejot.grant or rejot.revoke: who may subscribe to a
// version, decided by those who may change it (members of the role that
// owns its table).
func accessFunction(name string, grant bool) *Function {
	return &Function{
		Name:    name,
		Params:  []Param{{Name: "publication", Type: OIDText}, {Name: "version", Type: OIDInt4}, {Name: "system", Type: OIDText}},
		Returns: []Column{{Name: "publication", TypeOID: OIDText}, {Name: "version", TypeOID: OIDInt4}, {Name: "access", TypeOID: OIDText}},
		Run: func(ctx context.Context, env *Env, args Args) ([][]any, error) {
			return runAccess(ctx, env, args, grant)
		},
		Records: true,
	}
}

func runAccess(ctx context.Context, env *Env, args Args, grant bool) ([][]any, error) {
	name, version, err := nameAndVersion(Args{"name": args["publication"], "version": args["version"]})
	if err != nil {
		return nil, err
	}
	system := args.Text("system")
	if strings.TrimSpace(system) == "" {
		return nil, pgerr.Errorf(pgerr.InvalidParameterValue, "the system must not be empty").
			WithHint("Name the system that may subscribe, as rejot.systems shows it (or '*' for every system).")
	}
	// Checked in the caller's session first (42501 for one who may not
	// change the version), then again by _rejot.set_access.
	if _, err := ownVersion(ctx, env.Session, name, version); err != nil {
		return nil, err
	}
	v, g := strconv.Itoa(version), strconv.FormatBool(grant)
	rows, err := env.Session.Query(ctx, managed.SetAccess, &name, &v, &system, &g)
	if err != nil {
		return nil, notManaged(err)
	}
	access := accessOpen
	if r := rows.Values[0]; *r[0] == "true" {
		access = accessList(parseNameList(*r[1]))
	}
	return [][]any{{name, int32(version), access}}, nil
}

// accessList is how rejot.publications shows the access of a restricted
// version: its granted systems, or none.
func accessList(systems []string) string {
	if len(systems) == 0 {
		return "none"
	}
	return strings.Join(systems, ", ")
}

// checkAccess refuses a subscription of this system to a version it has
// no grant for, as the catalog says now; the catalog judges again when it
// applies the subscription, and the subscriber's apply asks it too.
func (env *Env) checkAccess(ctx context.Context, pub string, version int) error {
	x := env.Executor
	if x.Catalog == nil {
		return errNoCatalog
	}
	owner, access, granted, found, err := x.Catalog.VersionAccess(ctx, pub, version)
	if err != nil {
		return pgerr.Errorf(pgerr.ConnectionFailure, "cannot read who may subscribe to publication %s version %d: the catalog is not reachable", pub, version).
			WithHint("Subscribing needs the catalog; retry when it is back.")
	}
	if !found {
		return nil // versionColumns says it does not exist
	}
	if access == accessOpen || owner == x.System || slices.Contains(granted, x.System) {
		return nil
	}
	to := "to " + accessList(granted) + " only"
	if len(granted) == 0 {
		to = "to no other system"
	}
	return pgerr.Errorf(pgerr.InsufficientPrivilege, "system %s may not subscribe to publication %s version %d: its owner grants it %s",
		x.System, pub, version, to).
		WithHint("Ask the owner, system %s, to grant it: CALL rejot.grant('%s', %d, '%s') through that system's sidecar.", owner, pub, version, x.System)
}
