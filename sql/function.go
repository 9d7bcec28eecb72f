package sql

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
)

// Type OIDs of the values the API takes and returns.
const (
	OIDBool    uint32 = 16
	OIDInt8    uint32 = 20
	OIDInt4    uint32 = 23
	OIDText    uint32 = 25
	OIDDate    uint32 = 1082
	OIDUnknown uint32 = 705
)

// Column is one column of a call's result.
type Column struct {
	Name    string
	TypeOID uint32
}

// Result is what a call returns: rows of Go values that the proxy encodes in
// the formats the client asked for.
type Result struct {
	Columns []Column
	Rows    [][]any
	Tag     string // command tag, e.g. "CALL" or "SELECT 1"
}

// Param is a declared parameter of an API function.
type Param struct {
	Name     string
	Type     uint32
	Optional bool
	// Default is, for an optional parameter, the SQL constant that
	// leaving it out (or passing NULL) amounts to; "" for NULL. The
	// database's signposts declare it (managed/api.sql).
	Default string
}

// Function is one function of the rejot API.
type Function struct {
	Name    string
	Params  []Param
	Returns []Column
	Run     func(ctx context.Context, env *Env, args Args) ([][]any, error)
	// Records: the function records intent in _rejot (refused while
	// Executor.ManagedProblem says _rejot cannot be trusted).
	Records bool
	// ReadsCatalog: the function cannot run without the catalog (a call
	// waits for it, bounded, while it is unreachable).
	ReadsCatalog bool
}

func (f *Function) signature() string {
	parts := make([]string, len(f.Params))
	for i, p := range f.Params {
		parts[i] = p.Name + " " + typeLabel(p.Type)
		if p.Optional {
			parts[i] = "[" + parts[i] + "]"
		}
	}
	return "rejot." + f.Name + "(" + strings.Join(parts, ", ") + ")"
}

func typeLabel(oid uint32) string {
	switch oid {
	case OIDBool:
		return "boolean"
	case OIDInt4:
		return "integer"
	case OIDInt8:
		return "bigint"
	case OIDDate:
		return "date"
	default:
		return "text"
	}
}

// Session is what a call may ask of the caller's own database session: the
// proxy runs the statement inside the client's connection, so the caller's
// privileges and its open transaction apply. A server's error is a
// *pgerr.Error (pgerr.FromPgError), its position the InternalPosition.
type Session interface {
	Query(ctx context.Context, sql string, params ...*string) (*Rows, error)
}

// Rows are the text-format results of a Session query.
type Rows struct {
	Columns []string
	Fields  []Field
	Values  [][]*string
}

// Field describes a result column as the server does.
type Field struct {
	Name     string
	TableOID uint32 // the table of a plain column reference, else 0
	Column   int16  // its attribute number, else 0
	TypeOID  uint32
	TypeMod  int32
}

// Env is what a running function sees.
type Env struct {
	Session  Session
	Executor *Executor
	Call     *Call
	args     map[string]*Arg // the arguments bound to each parameter
}

// Executor binds and runs calls. Its exported fields configure it.
type Executor struct {
	Version  string        // the sidecar's version, returned by rejot.version()
	System   string        // the system this sidecar's database is
	Database string        // that database's name
	Catalog  CatalogReader // answers queries over the catalog relations; nil: none
	Names    NameClaimer   // decides publication names' owners; nil: the catalog judges later
	// DefaultCatalog, when the sidecar was not given --catalog, is the
	// server of the catalog it defaults to (the upstream's): a publication
	// not found may be in another server's default catalog, and the error
	// says so.
	DefaultCatalog string
	// CaptureProblem says why this database cannot be captured ("" when it
	// can): publishing is refused with that reason.
	CaptureProblem func() string
	// ManagedProblem says why this database's _rejot cannot be used (""
	// when it can: e.g. it belongs to another role): every call that
	// records intent there is refused with that reason.
	ManagedProblem func() string
	// Waiting, when set, says what keeps the sidecar from serving a call
	// that needs need ("" when nothing does), e.g. "the sidecar is
	// starting: installing schema _rejot": the call waits for it (see
	// starting.go).
	Waiting func(ctx context.Context, need Need) string
	// Hurry, when set, is called as a call starts to wait (the catalog's
	// connection retries at once rather than after its backoff).
	Hurry func()
	// StartWait bounds that wait (default DefaultStartWait).
	StartWait time.Duration
	// GuardsDDL says whether DDL that can break a published version is
	// to be checked at its commit (_rejot is installed and the sidecar's):
	// the proxy then sends managed.GuardContract in its transaction.
	GuardsDDL func() bool
	functions map[string]*Function
}

// NewExecutor returns an executor with the API's functions.
func NewExecutor(version string) *Executor {
	x := &Executor{Version: version, functions: map[string]*Function{}}
	x.Register(publishFunction())
	x.Register(unpublishFunction())
	x.Register(deprecateFunction())
	x.Register(subscribeFunction())
	x.Register(unsubscribeFunction())
	x.Register(resyncFunction())
	x.Register(grantFunction())
	x.Register(revokeFunction())
	x.Register(&Function{
		Name:    "version",
		Returns: []Column{{Name: "version", TypeOID: OIDText}},
		Run: func(ctx context.Context, env *Env, args Args) ([][]any, error) {
			return [][]any{{env.Executor.Version}}, nil
		},
	})
	return x
}

// Functions are the API's functions, by name.
func (x *Executor) Functions() []*Function {
	out := make([]*Function, 0, len(x.functions))
	for _, f := range x.functions {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Register adds a function to the API.
func (x *Executor) Register(f *Function) { x.functions[f.Name] = f }

func (x *Executor) names() []string {
	names := make([]string, 0, len(x.functions))
	for _, f := range x.functions {
		names = append(names, f.signature())
	}
	sort.Strings(names)
	return names
}

func (x *Executor) resolve(c *Call) (*Function, error) {
	f, ok := x.functions[c.Function]
	if !ok {
		return nil, pgerr.Errorf(pgerr.UndefinedFunction, "function rejot.%s(%s) does not exist", c.Function, argTypes(c)).
			At(int32(c.Location)).WithHint("The rejot functions are: %s.", strings.Join(x.names(), ", "))
	}
	return f, nil
}

func argTypes(c *Call) string {
	parts := make([]string, len(c.Args))
	for i, a := range c.Args {
		switch {
		case a.Cast != "":
			parts[i] = a.Cast
		case a.Kind == ArgNumber && !strings.ContainsAny(a.Value, ".eE"):
			parts[i] = "integer"
		case a.Kind == ArgNumber:
			parts[i] = "numeric"
		case a.Kind == ArgBool:
			parts[i] = "boolean"
		default:
			parts[i] = "unknown"
		}
		if a.Name != "" {
			parts[i] = a.Name + " => " + parts[i]
		}
	}
	return strings.Join(parts, ", ")
}

// Describe returns the types of a call's $n parameters (the declared type of
// the argument each one stands for) and its result columns, without running
// it. hint holds the types the client declared in its Parse message.
func (x *Executor) Describe(c *Call, hint []uint32) ([]uint32, []Column, error) {
	f, err := x.resolve(c)
	if err != nil {
		return nil, nil, err
	}
	bound, err := bind(c, f)
	if err != nil {
		return nil, nil, err
	}
	params := make([]uint32, c.NParams)
	copy(params, hint)
	for i, p := range f.Params {
		if a := bound[i]; a != nil && a.Kind == ArgParam && params[a.Param-1] == 0 {
			params[a.Param-1] = p.Type
		}
	}
	for i, t := range params {
		if t == 0 {
			return nil, nil, pgerr.Errorf(pgerr.IndeterminateDatatype, "could not determine data type of parameter $%d", i+1)
		}
	}
	return params, x.columns(c, f), nil
}

func (x *Executor) columns(c *Call, f *Function) []Column {
	cols := append([]Column(nil), f.Returns...)
	if len(cols) == 1 && c.Alias != "" {
		cols[0].Name = c.Alias
	} else if len(cols) == 1 && c.Form == FormSelect {
		cols[0].Name = f.Name
	}
	return cols
}

// Execute runs a call. params are the values of $1..$n in text form (nil for
// NULL), as the proxy decoded them from the client's Bind message.
func (x *Executor) Execute(ctx context.Context, c *Call, params []*string, sess Session) (*Result, error) {
	f, err := x.resolve(c)
	if err != nil {
		return nil, err
	}
	bound, err := bind(c, f)
	if err != nil {
		return nil, err
	}
	if err := x.waitUntilServable(ctx, needOf(f)); err != nil {
		return nil, err
	}
	if err := x.managedProblem(f); err != nil {
		return nil, err
	}
	args, err := bindValues(f, bound, params)
	if err != nil {
		return nil, err
	}
	env := &Env{Session: sess, Executor: x, Call: c, args: map[string]*Arg{}}
	for i, p := range f.Params {
		env.args[p.Name] = bound[i]
	}
	rows, runErr := f.Run(ctx, env, args)
	metricCalls.WithLabelValues(f.Name, outcome(runErr)).Inc()
	if runErr != nil {
		return nil, runErr
	}
	tag := "CALL"
	if c.Form != FormCall {
		tag = "SELECT " + strconv.Itoa(len(rows))
	}
	return &Result{Columns: x.columns(c, f), Rows: rows, Tag: tag}, nil
}

// managedProblem refuses a call that records intent in a _rejot the
// sidecar does not trust: its functions would be someone else's.
func (x *Executor) managedProblem(f *Function) error {
	if !f.Records || x.ManagedProblem == nil {
		return nil
	}
	if problem := x.ManagedProblem(); problem != "" {
		return pgerr.Errorf(pgerr.ObjectNotInPrerequisiteState, "this database is not managed by the sidecar: %s", problem).
			WithHint("An administrator of the database must deal with schema %s (the sidecar's log says the same).", managed.Schema)
	}
	return nil
}

// Args are a call's bound argument values by parameter name, in text form.
type Args map[string]*string

// Text returns an argument's value, or "" when it is missing or NULL.
func (a Args) Text(name string) string {
	if v := a[name]; v != nil {
		return *v
	}
	return ""
}

// Int returns an integer argument; ok is false when it is missing or NULL.
func (a Args) Int(name string) (n int64, ok bool, err error) {
	v := a[name]
	if v == nil {
		return 0, false, nil
	}
	n, perr := strconv.ParseInt(strings.TrimSpace(*v), 10, 64)
	if perr != nil {
		return 0, false, pgerr.Errorf(pgerr.InvalidTextRepresentation, "invalid input syntax for type integer: %q (argument %s)", *v, name)
	}
	return n, true, nil
}

// Bool returns a boolean argument; a missing or NULL one is false.
func (a Args) Bool(name string) (bool, error) {
	v := a[name]
	if v == nil {
		return false, nil
	}
	switch strings.ToLower(strings.TrimSpace(*v)) {
	case "t", "true", "yes", "on", "1":
		return true, nil
	case "f", "false", "no", "off", "0":
		return false, nil
	}
	return false, pgerr.Errorf(pgerr.InvalidTextRepresentation, "invalid input syntax for type boolean: %q (argument %s)", *v, name)
}
