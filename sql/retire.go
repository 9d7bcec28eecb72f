package sql

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
)

// Status of a publication version.
const (
	StatusActive     = "active"
	StatusDeprecated = "deprecated"
	StatusRetired    = "retired"
)

func unpublishFunction() *Function {
	return &Function{
		Name:    "unpublish",
		Params:  []Param{{Name: "name", Type: OIDText}, {Name: "version", Type: OIDInt4}, {Name: "force", Type: OIDBool, Optional: true, Default: "false"}},
		Returns: []Column{{Name: "publication", TypeOID: OIDText}, {Name: "version", TypeOID: OIDInt4}, {Name: "status", TypeOID: OIDText}},
		Run:     runUnpublish,
		Records: true,
	}
}

func deprecateFunction() *Function {
	return &Function{
		Name: "deprecate",
		Params: []Param{{Name: "name", Type: OIDText}, {Name: "version", Type: OIDInt4},
			{Name: "sunset", Type: OIDDate, Optional: true}, {Name: "note", Type: OIDText, Optional: true}},
		Returns: []Column{{Name: "publication", TypeOID: OIDText}, {Name: "version", TypeOID: OIDInt4},
			{Name: "status", TypeOID: OIDText}, {Name: "sunset", TypeOID: OIDText}},
		Run:     runDeprecate,
		Records: true,
	}
}

func runUnpublish(ctx context.Context, env *Env, args Args) ([][]any, error) {
	name, version, status, err := ownVersionArgs(ctx, env, args)
	if err != nil {
		return nil, err
	}
	force, err := args.Bool("force")
	if err != nil {
		return nil, err
	}
	if status != StatusRetired && !force {
		if err := env.checkUnsubscribed(ctx, name, version); err != nil {
			return nil, err
		}
	}
	change := &managed.Lifecycle{Publication: name, Version: version, Status: StatusRetired}
	if status != StatusRetired {
		if err := recordLifecycle(ctx, env.Session, change); err != nil {
			return nil, err
		}
	}
	return [][]any{{name, int32(version), StatusRetired}}, nil
}

func runDeprecate(ctx context.Context, env *Env, args Args) ([][]any, error) {
	name, version, status, err := ownVersionArgs(ctx, env, args)
	if err != nil {
		return nil, err
	}
	if status == StatusRetired {
		return nil, pgerr.Errorf(pgerr.ObjectNotInPrerequisiteState, "publication %s version %d is retired", name, version)
	}
	change := &managed.Lifecycle{Publication: name, Version: version, Status: StatusDeprecated,
		Sunset: args.Text("sunset"), Note: args.Text("note")}
	if err := recordLifecycle(ctx, env.Session, change); err != nil {
		return nil, err
	}
	var sunset any
	if change.Sunset != "" {
		sunset = change.Sunset
	}
	return [][]any{{name, int32(version), StatusDeprecated, sunset}}, nil
}

// ownVersionArgs reads the name and version arguments and locks this
// system's record of that version, returning its status.
func ownVersionArgs(ctx context.Context, env *Env, args Args) (string, int, string, error) {
	name, version, err := nameAndVersion(args)
	if err != nil {
		return "", 0, "", err
	}
	status, err := ownVersion(ctx, env.Session, name, version)
	return name, version, status, err
}

func nameAndVersion(args Args) (string, int, error) {
	name := args.Text("name")
	n, ok, err := args.Int("version")
	if err != nil {
		return "", 0, err
	}
	if !ok || n < 1 || n > 1<<30 {
		return "", 0, pgerr.Errorf(pgerr.InvalidParameterValue, "invalid version %s: versions are whole numbers from 1", nullText(args["version"]))
	}
	return name, int(n), nil
}

// ownVersion locks this system's record of a version, in the caller's
// transaction, and returns its status.
func ownVersion(ctx context.Context, sess Session, name string, version int) (string, error) {
	v := strconv.Itoa(version)
	rows, err := sess.Query(ctx, managed.LockPublishedStatus, &name, &v)
	if err != nil {
		return "", notManaged(err)
	}
	if len(rows.Values) == 0 {
		return "", pgerr.Errorf(pgerr.UndefinedObject, "publication %s version %d does not exist in this system", name, version).
			WithHint("See SELECT publication, version, owner FROM rejot.publications; a publication is changed through its owner's sidecar.")
	}
	return *rows.Values[0][0], nil
}

// checkUnsubscribed refuses to retire a version that is subscribed to.
func (env *Env) checkUnsubscribed(ctx context.Context, name string, version int) error {
	x := env.Executor
	if x.Catalog == nil {
		return errNoCatalog
	}
	n, err := x.Catalog.ActiveSubscriptions(ctx, name, version)
	if err != nil {
		return pgerr.Errorf(pgerr.ConnectionFailure, "cannot check the subscriptions of %s version %d: the catalog is not reachable", name, version).
			WithHint("Retry when the catalog is back, or retire it regardless with force => true.")
	}
	if n != 0 {
		return pgerr.Errorf(pgerr.ObjectInUse, "publication %s version %d has %d subscription(s)", name, version, n).
			WithHint("Ask the subscribers to move (rejot.subscriptions shows them), or retire it regardless with force => true.")
	}
	return nil
}

// recordLifecycle records a deprecate or unpublish (by c.Status) and its
// command, whose payload _rejot makes of what it recorded.
func recordLifecycle(ctx context.Context, sess Session, c *managed.Lifecycle) error {
	version := strconv.Itoa(c.Version)
	var sunset *string
	if c.Sunset != "" {
		sunset = &c.Sunset
	}
	rows, err := sess.Query(ctx, managed.SetLifecycle, &c.Publication, &version, &c.Status, sunset, &c.Note)
	if err != nil {
		var qe *pgerr.Error
		if errors.As(err, &qe) && strings.HasPrefix(qe.Code, pgerr.ClassDataException) {
			return &pgerr.Error{Code: qe.Code, Message: qe.Message + " (argument sunset)"}
		}
		return notManaged(err)
	}
	if len(rows.Values) == 1 && rows.Values[0][0] != nil {
		c.Sunset = *rows.Values[0][0] // normalised by Postgres
	}
	return nil
}
