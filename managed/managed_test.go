package managed_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/internal/pgtest"
	"github.com/rejot-dev/rejot/managed"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg, pgtest.Options{})) }

// TestNotInstalled: before Install, readers find nothing recorded rather
// than an error, and statements fail with NotInstalled.
func TestNotInstalled(t *testing.T) {
	ctx := context.Background()
	conn := pg.Connect(t, pg.CreateDB(t))
	subs, err := managed.LoadSubscriptions(ctx, conn)
	if err != nil || subs != nil {
		t.Fatalf("LoadSubscriptions = %v, %v; want nothing", subs, err)
	}
	_, err = conn.Exec(ctx, managed.CapturedVersions)
	if !managed.NotInstalled(err) {
		t.Fatalf("CapturedVersions before Install: %v; want NotInstalled", err)
	}
}

// TestInstall: installing twice is safe, and the outbox takes commands
// in order and hands them out until marked applied.
func TestInstall(t *testing.T) {
	ctx := context.Background()
	conn := pg.Connect(t, pg.CreateDB(t))
	for range 2 {
		if err := managed.Install(ctx, conn); err != nil {
			t.Fatal(err)
		}
	}
	if err := managed.ListenCommands(ctx, conn); err != nil {
		t.Fatal(err)
	}
	// Commands are written by the calls that record intent: a publish and
	// a deprecate.
	if _, err := conn.Exec(ctx, "CREATE TABLE public.orders (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, managed.RecordPublished, "orders", "1", "0", "SELECT id FROM orders", `"public"."orders"`,
		"{id}", `[{"name": "id"}]`, "", "shop", "shop"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, managed.SetLifecycle, "orders", "1", "deprecated", nil, ""); err != nil {
		t.Fatal(err)
	}
	wait, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if n, err := conn.WaitForNotification(wait); err != nil || n.Channel != managed.ChannelCommands {
		t.Fatalf("notification: %v, %v", n, err)
	}
	cmds, err := managed.PendingCommands(ctx, conn, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(cmds) != 2 || cmds[0].Kind != managed.KindPublish || cmds[1].Kind != managed.KindDeprecate || cmds[0].UID == "" {
		t.Fatalf("pending: %+v", cmds)
	}
	if err := managed.MarkApplied(ctx, conn, cmds[0].ID, ""); err != nil {
		t.Fatal(err)
	}
	if cmds, err = managed.PendingCommands(ctx, conn, 100); err != nil || len(cmds) != 1 || cmds[0].Kind != managed.KindDeprecate {
		t.Fatalf("pending after one applied: %+v, %v", cmds, err)
	}
}

// TestSubscriptionPosition: a subscription's position moves only for its
// generation; a resync makes the old one ErrMoved.
func TestSubscriptionPosition(t *testing.T) {
	ctx := context.Background()
	conn := pg.Connect(t, pg.CreateDB(t))
	if err := managed.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE public.t (id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err) // a subscription is recorded into a table that exists
	}
	cols, _ := json.Marshal([]managed.SubscribedColumn{{Name: "id", Type: "bigint", Key: true}})
	if _, err := conn.Exec(ctx, managed.InsertSubscription, "public.t", "public", "t", "orders", "1", string(cols), "true"); err != nil {
		t.Fatal(err)
	}
	subs, err := managed.LoadSubscriptions(ctx, conn)
	if err != nil || len(subs) != 1 {
		t.Fatalf("subscriptions: %+v, %v", subs, err)
	}
	s := subs[0]
	if s.Target != "public.t" || s.Version != 1 || !s.Copy || s.Generation != 1 || len(s.Columns) != 1 || !s.Columns[0].Key {
		t.Fatalf("subscription: %+v", s)
	}
	if p, err := managed.Position(ctx, conn, s.Target, s.Generation); err != nil || p != nil {
		t.Fatalf("position before the copy: %v, %v", p, err)
	}
	if err := managed.Copied(ctx, conn, s.Target, s.Generation, 7, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, managed.Advance, s.Target, s.Generation, int64(9), time.Now()); err != nil {
		t.Fatal(err)
	}
	if p, err := managed.Position(ctx, conn, s.Target, s.Generation); err != nil || p == nil || *p != 9 {
		t.Fatalf("position after advance: %v, %v", p, err)
	}
	if err := managed.Recopy(ctx, conn, s.Target, s.Generation, 8); !errors.Is(err, managed.ErrMoved) {
		t.Fatalf("recopy from a position it is not at: %v", err)
	}
	if _, err := conn.Exec(ctx, managed.ResyncSubscription, s.Target); err != nil {
		t.Fatal(err)
	}
	if _, err := managed.Position(ctx, conn, s.Target, s.Generation); !errors.Is(err, managed.ErrMoved) {
		t.Fatalf("old generation after resync: %v", err)
	}
}
