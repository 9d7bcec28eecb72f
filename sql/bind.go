package sql

import (
	"strings"

	"github.com/rejot-dev/rejot/internal/pgerr"
)

// bind matches a call's arguments to the function's parameters the way
// Postgres does: positional first, then named (=>), each parameter at most
// once, every required one present.
func bind(c *Call, f *Function) ([]*Arg, error) {
	bound := make([]*Arg, len(f.Params))
	seenNamed := false
	for i := range c.Args {
		a := &c.Args[i]
		if a.Name == "" {
			if seenNamed {
				return nil, pgerr.Errorf(pgerr.SyntaxError, "positional argument cannot follow named argument").At(int32(a.Location))
			}
			if i >= len(f.Params) {
				return nil, tooMany(c, f, a)
			}
			bound[i] = a
			continue
		}
		seenNamed = true
		j := paramIndex(f, a.Name)
		if j < 0 {
			return nil, pgerr.Errorf(pgerr.UndefinedFunction, "rejot.%s has no parameter named %q", f.Name, a.Name).
				At(int32(a.Location)).WithHint("Its parameters are: %s.", f.signature())
		}
		if bound[j] != nil {
			return nil, pgerr.Errorf(pgerr.SyntaxError, "argument %q given more than once", a.Name).At(int32(a.Location))
		}
		bound[j] = a
	}
	for i, p := range f.Params {
		if bound[i] == nil && !p.Optional {
			return nil, pgerr.Errorf(pgerr.UndefinedFunction, "rejot.%s needs the argument %q", f.Name, p.Name).
				At(int32(c.Location)).WithHint("Call it as %s.", f.signature())
		}
	}
	return bound, nil
}

func tooMany(c *Call, f *Function, a *Arg) error {
	return pgerr.Errorf(pgerr.UndefinedFunction, "function rejot.%s(%s) does not exist", f.Name, argTypes(c)).
		At(int32(a.Location)).WithHint("rejot.%s takes %d argument(s): %s.", f.Name, len(f.Params), f.signature())
}

func paramIndex(f *Function, name string) int {
	for i, p := range f.Params {
		if strings.EqualFold(p.Name, name) {
			return i
		}
	}
	return -1
}

// bindValues resolves each bound argument to its text value: the constant, or
// the value of its $n parameter.
func bindValues(f *Function, bound []*Arg, params []*string) (Args, error) {
	args := make(Args, len(f.Params))
	for i, p := range f.Params {
		a := bound[i]
		if a == nil {
			continue
		}
		switch a.Kind {
		case ArgNull:
			args[p.Name] = nil
		case ArgParam:
			if a.Param < 1 || a.Param > len(params) {
				return nil, pgerr.Errorf(pgerr.ProtocolViolation, "there is no parameter $%d", a.Param).At(int32(a.Location))
			}
			args[p.Name] = params[a.Param-1]
		default:
			v := a.Value
			args[p.Name] = &v
		}
	}
	return args, nil
}
