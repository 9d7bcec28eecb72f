package sql

import (
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Form is the statement form a call was written in; it decides the command
// tag and the result column's name, as Postgres would.
type Form int

const (
	FormCall       Form = iota // CALL rejot.f(...)
	FormSelect                 // SELECT rejot.f(...)
	FormSelectFrom             // SELECT * FROM rejot.f(...)
)

// Call is a parsed call of a rejot function.
type Call struct {
	Function string // name without the schema, as written (case-folded by the parser)
	Form     Form
	Alias    string // output name given with AS, if any
	Args     []Arg
	Location int    // 0-based byte offset of the function name in the query
	NParams  int    // highest $n used by the arguments
	Query    string // the query string the call was parsed from
}

// maxParams is the most parameters a Bind message can carry.
const maxParams = 65535

// ArgKind says what an argument is.
type ArgKind int

const (
	ArgString ArgKind = iota // a string constant (also dollar-quoted)
	ArgNumber                // an integer or numeric constant
	ArgBool
	ArgNull
	ArgParam // a $n parameter of the extended protocol
)

// Arg is one argument of a call: a constant or a parameter, possibly cast.
type Arg struct {
	Name     string // set for named (=>) arguments
	Kind     ArgKind
	Value    string // the constant's text
	Param    int    // $n, for ArgParam
	Cast     string // type name of an explicit cast, lower case
	Location int    // 0-based byte offset in the query
}

func newCall(t topLevel, query string) (*Call, error) {
	fn := t.fn
	if fn.AggStar || fn.FuncVariadic || len(fn.AggOrder) != 0 || fn.AggFilter != nil || fn.Over != nil || fn.AggWithinGroup {
		return nil, pgerr.Errorf(pgerr.SyntaxError, "rejot.%s() takes plain arguments", funcName(fn)).At(fn.Location)
	}
	if len(fn.Funcname) != 2 {
		return nil, pgerr.Errorf(pgerr.UndefinedFunction, "function %s() does not exist", qualifiedName(fn)).
			At(fn.Location).WithHint("Call the rejot functions as rejot.name(...).")
	}
	c := &Call{Function: funcName(fn), Form: t.form, Alias: t.alias, Location: int(fn.Location), Query: query}
	for _, n := range fn.Args {
		a, err := newArg(n)
		if err != nil {
			return nil, err
		}
		if a.Kind == ArgParam && a.Param > c.NParams {
			c.NParams = a.Param
		}
		c.Args = append(c.Args, a)
	}
	return c, nil
}

func qualifiedName(fn *pg_query.FuncCall) string {
	parts := make([]string, len(fn.Funcname))
	for i, n := range fn.Funcname {
		parts[i] = n.GetString_().GetSval()
	}
	return strings.Join(parts, ".")
}

func newArg(n *pg_query.Node) (Arg, error) {
	var a Arg
	if na := n.GetNamedArgExpr(); na != nil {
		a.Name = na.Name
		n = na.Arg
	}
	if tc := n.GetTypeCast(); tc != nil {
		a.Cast = typeName(tc.TypeName)
		n = tc.Arg
	}
	if err := setArgValue(&a, n); err != nil {
		return a, err
	}
	return a, nil
}

func setArgValue(a *Arg, n *pg_query.Node) error {
	switch {
	case n.GetParamRef() != nil:
		p := n.GetParamRef()
		if p.Number < 1 || p.Number > maxParams {
			return pgerr.Errorf(pgerr.UndefinedParameter, "there is no parameter $%d", p.Number).At(p.Location)
		}
		a.Kind, a.Param, a.Location = ArgParam, int(p.Number), int(p.Location)
		return nil
	case n.GetAConst() != nil:
		c := n.GetAConst()
		a.Location = int(c.Location)
		switch v := c.Val.(type) {
		case *pg_query.A_Const_Sval:
			a.Kind, a.Value = ArgString, v.Sval.Sval
		case *pg_query.A_Const_Ival:
			a.Kind, a.Value = ArgNumber, strconv.Itoa(int(v.Ival.Ival))
		case *pg_query.A_Const_Fval:
			a.Kind, a.Value = ArgNumber, v.Fval.Fval
		case *pg_query.A_Const_Boolval:
			a.Kind, a.Value = ArgBool, strconv.FormatBool(v.Boolval.Boolval)
		case nil:
			a.Kind = ArgNull
		default:
			return pgerr.Errorf(pgerr.FeatureNotSupported, "unsupported constant in a rejot call").At(c.Location)
		}
		if c.Isnull {
			a.Kind = ArgNull
		}
		return nil
	case n.GetAArrayExpr() != nil:
		// ARRAY['a', 'b'] of string constants: the array's text form.
		arr := n.GetAArrayExpr()
		parts := make([]string, len(arr.Elements))
		for i, e := range arr.Elements {
			var el Arg
			if err := setArgValue(&el, e); err != nil || el.Kind != ArgString {
				return pgerr.Errorf(pgerr.FeatureNotSupported, "an ARRAY argument of a rejot function holds string constants").At(arr.Location)
			}
			parts[i] = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(el.Value) + `"`
		}
		a.Kind, a.Value, a.Location = ArgString, "{"+strings.Join(parts, ",")+"}", int(arr.Location)
		return nil
	case n.GetAExpr() != nil && isNegation(n.GetAExpr()):
		// -5 arrives as 0 - 5 only for non-integers; keep it a constant.
		e := n.GetAExpr()
		if err := setArgValue(a, e.Rexpr); err != nil || a.Kind != ArgNumber {
			return pgerr.Errorf(pgerr.FeatureNotSupported, "arguments of rejot functions must be constants or $n parameters").At(e.Location)
		}
		a.Value = "-" + a.Value
		return nil
	}
	return pgerr.Errorf(pgerr.FeatureNotSupported, "arguments of rejot functions must be constants or $n parameters").
		At(location(n)).WithHint("Write the value itself, for example 'orders' or 42, or pass it as a parameter.")
}

func isNegation(e *pg_query.A_Expr) bool {
	if e.Kind != pg_query.A_Expr_Kind_AEXPR_OP || e.Lexpr != nil || len(e.Name) != 1 {
		return false
	}
	return e.Name[0].GetString_().GetSval() == "-"
}

func typeName(t *pg_query.TypeName) string {
	if t == nil || len(t.Names) == 0 {
		return ""
	}
	name := t.Names[len(t.Names)-1].GetString_().GetSval()
	if len(t.ArrayBounds) > 0 {
		name += "[]"
	}
	return strings.ToLower(name)
}

// location finds where a node starts: the first location, depth first,
// of the node or what it contains; -1 when none is known.
func location(n *pg_query.Node) int32 {
	loc := int32(-1)
	if n == nil {
		return loc
	}
	walk(n.ProtoReflect(), func(m protoreflect.Message) {
		if loc >= 0 {
			return
		}
		if f := m.Descriptor().Fields().ByName("location"); f != nil && f.Kind() == protoreflect.Int32Kind {
			if v := int32(m.Get(f).Int()); v >= 0 {
				loc = v
			}
		}
	})
	return loc
}
