package tests

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestSidecarsWithRolesOfTheirOwn follows docs/guide.md as written, its
// SQL read from the guide with only the names made this test's: sidecars
// with roles of their own, neither a superuser, share the catalog and
// event log; the owner's role creates the catalog's schemas, the grants
// the guide lists let the subscriber's role in; a team role that is a
// member of the tables' owner publishes; and a subscription fills and
// follows — the state table the owner's first fill makes included.
func TestSidecarsWithRolesOfTheirOwn(t *testing.T) {
	ctx := context.Background()
	shop, billing, cat := pg.CreateDB(t), pg.CreateDB(t), pg.CreateDB(t)
	own, sub := "rejot_"+shop, "rejot_"+billing
	tables, publisher := "owner_"+shop, "pub_"+shop
	guide := guideSQL(t, map[string]string{"rejot_shop": own, "rejot_billing": sub, "shop_owner": tables,
		"shop_publisher": publisher, "shop": pgx.Identifier{shop}.Sanitize(), "billing": pgx.Identifier{billing}.Sanitize()})
	admin := pg.Connect(t, "postgres")
	// The team's own roles, which the guide takes as given.
	mustExec(t, admin, fmt.Sprintf("CREATE ROLE %[1]s NOLOGIN; CREATE ROLE %[2]s LOGIN IN ROLE %[1]s", tables, publisher))
	t.Cleanup(func() {
		for _, db := range []string{shop, billing, cat} {
			if c, err := pgx.Connect(ctx, pg.URL(db)); err == nil {
				c.Exec(ctx, fmt.Sprintf("DROP OWNED BY %s, %s, %s, %s CASCADE", own, sub, tables, publisher))
				c.Close(ctx)
			}
		}
		admin.Exec(ctx, fmt.Sprintf("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '%s'", shop))
		admin.Exec(ctx, fmt.Sprintf("DROP ROLE IF EXISTS %s, %s, %s, %s", own, sub, publisher, tables))
	})
	mustExec(t, admin, guide["on the owner's server"])
	mustExec(t, admin, guide["on the subscriber's server"])
	// The catalog's database, created for the owner's role.
	mustExec(t, admin, fmt.Sprintf("ALTER DATABASE %s OWNER TO %s", pgx.Identifier{cat}.Sanitize(), own))
	shopAdmin, billingAdmin := pg.Connect(t, shop), pg.Connect(t, billing)
	mustExec(t, shopAdmin, fmt.Sprintf(`CREATE TABLE items (id int PRIMARY KEY, v text);
		INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 50) g;
		ALTER TABLE items OWNER TO %s`, tables))
	mustExec(t, billingAdmin, fmt.Sprintf("GRANT CREATE ON SCHEMA public TO %s", sub))

	owner := startSidecarUpstream(t, directURL(shop, own), "--catalog", directURL(cat, own))
	ownerConn := connectAs(t, owner.url(shop, publisher))
	// The owner's sidecar makes the catalog and the log at start; then the
	// grants the guide lists.
	catAdmin := pg.Connect(t, cat)
	waitFor(t, 20*time.Second, func() bool {
		var ready bool
		// Both schemas migrated to the end: the log's last migration
		// makes change_groups; the catalog's are counted.
		catAdmin.QueryRow(ctx, `SELECT to_regclass('rejot_log.change_groups') IS NOT NULL
			AND (SELECT count(*) FROM public.rejot_catalog_migrations) = $1`, catalogMigrations(t)).Scan(&ready)
		return ready
	})
	mustExec(t, catAdmin, guide["in the database rejot"])
	// The first fill makes the version's state table, after the grants.
	name := "items_" + shop
	waitFor(t, 20*time.Second, func() bool {
		_, err := ownerConn.Exec(ctx, "CALL rejot.publish($1, 1, 'SELECT id, v FROM items')", name)
		return err == nil
	})
	// The catalog shows the role it was published as, which its capture runs as.
	waitFor(t, 20*time.Second, func() bool {
		var role string
		ownerConn.QueryRow(ctx, "SELECT owner_role FROM rejot.publications WHERE publication = $1", name).Scan(&role)
		return role == publisher
	})
	var state string
	waitFor(t, 20*time.Second, func() bool {
		return catAdmin.QueryRow(ctx, "SELECT tablename FROM pg_tables WHERE schemaname = 'rejot_log' AND tablename LIKE 'state\\_%'").Scan(&state) == nil
	})
	var can bool
	catAdmin.QueryRow(ctx, "SELECT has_table_privilege($1, 'rejot_log.' || $2, 'SELECT')", sub, state).Scan(&can)
	if !can {
		t.Fatalf("%s may not read %s, made after the grants", sub, state)
	}

	consumer := startSidecarUpstream(t, directURL(billing, sub), "--catalog", directURL(cat, sub))
	consumerConn := connectAs(t, consumer.url(billing, sub))
	target := "public." + name
	waitFor(t, 20*time.Second, func() bool {
		_, err := consumerConn.Exec(ctx, "CALL rejot.subscribe($1, 1, $2)", name, target)
		return err == nil
	})
	mustExec(t, shopAdmin, "UPDATE items SET v = 'changed' WHERE id <= 5; DELETE FROM items WHERE id > 45")
	targetConverges(t, 30*time.Second, shopAdmin, "SELECT id, v FROM items ORDER BY id", billingAdmin, target+" ORDER BY id")
	waitFor(t, 20*time.Second, func() bool {
		var status string
		consumerConn.QueryRow(ctx, "SELECT status FROM rejot.subscriptions WHERE target = $1", target).Scan(&status)
		return status == "streaming"
	})

	// A column added (minor 1), and the guide's subscribe again: the
	// sidecar's role, no superuser, adds it to its table and fills it.
	mustExec(t, shopAdmin, "ALTER TABLE items ADD COLUMN w int; UPDATE items SET w = id * 10")
	if _, err := ownerConn.Exec(ctx, "CALL rejot.publish($1, 1, 'SELECT id, v, w FROM items')", name); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() bool {
		var minor int
		ownerConn.QueryRow(ctx, "SELECT minor FROM rejot.publications WHERE publication = $1 AND version = 1", name).Scan(&minor)
		return minor == 1
	})
	later := guideSQL(t, map[string]string{"orders": name, "billing": "public"})
	mustExec(t, consumerConn, later["a newer minor's columns"])
	targetConverges(t, 30*time.Second, shopAdmin, "SELECT id, v, w FROM items ORDER BY id", billingAdmin, target+" ORDER BY id")
}

// guideSQL returns the SQL blocks of docs/guide.md's first section, by
// the comment each starts with ("on the owner's server", ...), with the
// guide's names replaced by the test's, passwords left out, and ALTER
// SYSTEM (the test cluster already runs with wal_level logical) skipped.
func guideSQL(t *testing.T, names map[string]string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, block := range sqlBlocks(t, "../docs/guide.md") {
		first, _, _ := strings.Cut(block, "\n")
		key := strings.TrimSpace(strings.TrimPrefix(first, "--"))
		key, _, _ = strings.Cut(key, ",")
		var lines []string
		for _, line := range strings.Split(block, "\n") {
			if !strings.HasPrefix(line, "ALTER SYSTEM") {
				lines = append(lines, line)
			}
		}
		sql := strings.ReplaceAll(strings.Join(lines, "\n"), " PASSWORD '…'", "")
		out[key] = guideName.ReplaceAllStringFunc(sql, func(w string) string {
			if n, ok := names[w]; ok {
				return n
			}
			return w
		})
	}
	for _, key := range []string{"on the owner's server", "on the subscriber's server", "in the database rejot"} {
		if out[key] == "" {
			t.Fatalf("docs/guide.md has no SQL block starting with -- %s", key)
		}
	}
	return out
}

var guideName = regexp.MustCompile(`\b[a-z_]+\b`)

func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func connectAs(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// catalogMigrations counts the catalog's migration files.
func catalogMigrations(t *testing.T) int {
	t.Helper()
	files, err := filepath.Glob("../catalog/migrations/*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no catalog migrations found: %v", err)
	}
	return len(files)
}

// dropRolesAtEnd drops roles a test made, and what they own in database db,
// when the test ends.
func dropRolesAtEnd(t *testing.T, db string, roles ...string) {
	t.Cleanup(func() {
		ctx := context.Background()
		c, err := pgx.Connect(ctx, pg.URL(db))
		if err != nil {
			return
		}
		defer c.Close(ctx)
		list := strings.Join(roles, ", ")
		// replica: published tables go too, past the contract guard
		c.Exec(ctx, "SET session_replication_role = replica; DROP OWNED BY "+list+" CASCADE; DROP ROLE IF EXISTS "+list)
	})
}
