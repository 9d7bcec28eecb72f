// Command rejot is the ReJot sidecar: `rejot serve` stands in front of one
// Postgres database, `rejot demo` plays the story on throwaway clusters.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	tuneGC()
	// The first SIGTERM or SIGINT asks for a graceful stop; a second one
	// exits at once (still safe: every invariant holds on kill -9).
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-signals
		stop()
		<-signals
		fmt.Fprintln(os.Stderr, "rejot: second signal: exiting now")
		os.Exit(1)
	}()
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(ctx, os.Args[2:])
	case "demo":
		err = demo(ctx, os.Args[2:])
	case "version", "--version", "-v":
		fmt.Println(buildVersion())
	case "help", "--help", "-h":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "rejot: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "rejot:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `rejot — share Postgres data between teams' databases, in SQL.

Usage:
  rejot serve --upstream URL [--listen :6432] [flags]   run the sidecar for one database
  rejot demo [--once]                                   run the story on throwaway clusters
  rejot version

Run 'rejot serve --help' for the sidecar's flags (each also as a REJOT_* variable).
`)
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		v := info.Main.Version
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "0.1.0-dev+" + s.Value[:12]
			}
		}
		if v != "" && v != "(devel)" {
			return v
		}
	}
	return "0.1.0-dev"
}

// newLogger logs JSON, or readable lines when stderr is a terminal.
func newLogger(level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(strings.ToLower(level))
	if err != nil {
		return zerolog.Nop(), fmt.Errorf("invalid --log-level %q", level)
	}
	zerolog.TimeFieldFormat = "2006-01-02T15:04:05.000Z07:00" // milliseconds: replication is measured in them
	var log zerolog.Logger
	if isatty.IsTerminal(os.Stderr.Fd()) {
		log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: "15:04:05.000"})
	} else {
		log = zerolog.New(os.Stderr)
	}
	return log.Level(lvl).With().Timestamp().Logger(), nil
}

// tuneGC trades memory for CPU unless GOGC or GOMEMLIMIT say otherwise:
// replication allocates many short-lived values, and at Go's default the
// collector took about a third of the sidecar's CPU under load. The heap
// may grow to five times what is live, and the collector works harder as
// it nears 1 GiB.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(1 << 30)
	}
}
