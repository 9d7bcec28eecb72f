package capture_test

import (
	"os"
	"testing"

	"github.com/rejot-dev/rejot/internal/pgtest"
)

// pg is the throwaway cluster every test of the package runs against: the
// owner's databases and the event log's.
var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg, pgtest.Options{})) }
