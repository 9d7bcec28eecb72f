package sql

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// findRejotFuncs returns every call of a rejot-qualified function anywhere in
// the tree, in the order the walk meets them.
func findRejotFuncs(node *pg_query.Node) []*pg_query.FuncCall {
	var found []*pg_query.FuncCall
	walk(node.ProtoReflect(), func(m protoreflect.Message) {
		if fn, ok := m.Interface().(*pg_query.FuncCall); ok && isRejotFunc(fn) {
			found = append(found, fn)
		}
	})
	return found
}

// walk visits every message of a parse tree, depth first.
func walk(m protoreflect.Message, visit func(protoreflect.Message)) {
	visit(m)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		switch {
		case fd.IsList():
			list := v.List()
			for i := 0; i < list.Len(); i++ {
				walk(list.Get(i).Message(), visit)
			}
		case fd.IsMap():
		default:
			walk(v.Message(), visit)
		}
		return true
	})
}
