package sql

import (
	"testing"

	"github.com/rejot-dev/rejot/internal/pgerr"
)

func TestParameterNumbersAreBounded(t *testing.T) {
	for _, q := range []string{"CALL rejot.version($0)", "CALL rejot.version($65536)", "SELECT rejot.version($2147483647)"} {
		st, err := ParseOne(q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if st.Err == nil || pgErrorOf(st.Err).Code != pgerr.UndefinedParameter {
			t.Errorf("%s: got %+v, want 42P02", q, st.Err)
		}
	}
	st, _ := ParseOne("CALL rejot.version($65535)")
	if st.Call == nil || st.Call.NParams != 65535 {
		t.Errorf("$65535: %+v", st)
	}
}
