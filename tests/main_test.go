// Package tests holds ReJot's end-to-end tests: a real Postgres cluster, the
// built rejot binary in front of it, and real clients (pgx in every query
// mode, database/sql, psql). Where the answer must be identical, the same
// assertions run directly against Postgres and through the sidecar.
package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/rejot-dev/rejot/internal/pgtest"
)

var (
	pg       *pgtest.Cluster
	rejotBin string // the binary under test, built once
	psqlBin  string
)

// Users with password authentication; trust for everyone else.
var authHBA = []string{
	"host all md5user 127.0.0.1/32 md5",
	"host all scramuser 127.0.0.1/32 scram-sha-256",
	"host all pwuser 127.0.0.1/32 password",
}

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "rejot-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	rejotBin = filepath.Join(dir, "rejot")
	args := []string{"build", "-o", rejotBin}
	if os.Getenv("REJOT_TEST_RACE") != "" {
		args = append(args, "-race") // the sidecars themselves under the race detector
	}
	build := exec.Command("go", append(args, "../cmd/rejot")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build rejot:", err)
		return 1
	}
	bin, err := pgtest.BinDir()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	psqlBin = filepath.Join(bin, "psql")
	return pgtest.Main(m, &pg, pgtest.Options{HBA: authHBA})
}
