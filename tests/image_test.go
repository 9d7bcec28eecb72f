package tests

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testImage is the name the image test builds under (not the one `make
// image` gives by default), removed when the test ends.
const testImage = "localhost/rejot-image-test:latest"

// TestImage: the image `make image` builds from the Dockerfile is a
// scratch image whose entrypoint, run in the image's own filesystem as
// the image's user, answers --version and serves: a query through its
// listen port, and /readyz ready.
func TestImage(t *testing.T) {
	needImageTools(t)
	buildImage(t)
	cfg := inspectImage(t)
	if cfg.User != "10001:10001" || !slices.Equal(cfg.Entrypoint, []string{"/rejot"}) || !slices.Equal(cfg.Cmd, []string{"serve"}) {
		t.Fatalf("image config: user %q, entrypoint %q, cmd %q", cfg.User, cfg.Entrypoint, cfg.Cmd)
	}
	for _, port := range []string{"6432/tcp", "9187/tcp"} {
		if _, ok := cfg.ExposedPorts[port]; !ok {
			t.Errorf("port %s not exposed: %v", port, cfg.ExposedPorts)
		}
	}
	root := mountImage(t)
	for _, f := range []string{"etc/ssl/certs/ca-certificates.crt", "etc/passwd", "etc/group"} {
		if st, err := os.Stat(filepath.Join(root, f)); err != nil || st.Size() == 0 {
			t.Errorf("image has no %s: %v", f, err)
		}
	}
	// chroot runs the entrypoint in the image's filesystem, which has
	// nothing but the binary: a binary that needed a shared library or
	// a dynamic loader would not start.
	run := append([]string{"chroot", "--userspec=" + cfg.User, root}, cfg.Entrypoint...)
	out, err := exec.Command(run[0], append(run[1:], "--version")...).CombinedOutput()
	version := strings.TrimSpace(string(out))
	if err != nil || version == "" {
		t.Fatalf("--version in the image: %v: %s", err, out)
	}

	db := pg.CreateDB(t)
	sc := waitListening(t, launchCommand(t, run, pg.URL(db)))
	if uid := processUID(t, sc.cmd.Process.Pid); uid != "10001" {
		t.Errorf("the sidecar runs as uid %s, not the image's user", uid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := connect(t, sc.url(db, "postgres"))
	var got, database string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&database); err != nil {
		t.Fatalf("query through the image's sidecar: %v", err)
	}
	if err := conn.QueryRow(ctx, "SELECT rejot.version()").Scan(&got); err != nil {
		t.Fatalf("rejot.version() through the image's sidecar: %v", err)
	}
	if got != version || database != db {
		t.Fatalf("through the image's sidecar: version %q (--version said %q), database %q", got, version, database)
	}
	base := sc.httpURL(t)
	var last readyBody
	defer func() {
		if t.Failed() {
			t.Logf("last readyz: %+v", last)
		}
	}()
	waitFor(t, 30*time.Second, func() bool {
		code, r := readyz(t, base)
		last = r
		return code == 200 && r.Ready
	})
}

// needImageTools skips the image test where it cannot run (no buildah,
// or not root for chroot), except on CI, which must run it: there
// scripts/install-deps.sh installs buildah and the tests run as root.
func needImageTools(t *testing.T) {
	t.Helper()
	why := ""
	if _, err := exec.LookPath("buildah"); err != nil {
		why = "buildah is not installed (scripts/install-deps.sh installs it)"
	} else if os.Geteuid() != 0 {
		why = "it runs the image's entrypoint with chroot, which needs root"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("the image test must run on CI, but %s", why)
	}
	t.Skipf("skipping the image test: %s", why)
}

// buildImage runs `make image` into a context folder of the test's own;
// buildah's layer cache makes a rebuild of the same binary quick. The
// image is removed when the test ends.
func buildImage(t *testing.T) {
	t.Helper()
	make := exec.Command("make", "-C", "..", "image", "IMAGE="+testImage, "IMAGE_CONTEXT="+filepath.Join(t.TempDir(), "context"))
	if out, err := make.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	t.Cleanup(func() { buildah(t, "rmi", testImage) })
}

// imageConfig is the part of the image's OCI configuration the test checks.
type imageConfig struct {
	User         string
	Entrypoint   []string
	Cmd          []string
	ExposedPorts map[string]struct{}
}

func inspectImage(t *testing.T) imageConfig {
	t.Helper()
	var img struct {
		OCIv1 struct{ Config imageConfig } `json:"OCIv1"`
	}
	out := buildah(t, "inspect", "--type", "image", testImage)
	if err := json.Unmarshal([]byte(out), &img); err != nil {
		t.Fatalf("buildah inspect: %v", err)
	}
	return img.OCIv1.Config
}

// mountImage makes a working container of the image and mounts its
// filesystem; both are removed when the test ends.
func mountImage(t *testing.T) string {
	t.Helper()
	ctr := strings.TrimSpace(buildah(t, "from", "--pull=never", testImage))
	t.Cleanup(func() { buildah(t, "rm", ctr) })
	return strings.TrimSpace(buildah(t, "mount", ctr))
}

func buildah(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("buildah", args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("buildah %s: %v: %s", strings.Join(args, " "), err, stderr)
	}
	return string(out)
}

var uidLine = regexp.MustCompile(`(?m)^Uid:\s+(\d+)`)

// processUID is the real uid of a running process.
func processUID(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	m := uidLine.FindSubmatch(b)
	if m == nil {
		t.Fatalf("no Uid line in /proc/%d/status", pid)
	}
	return string(m[1])
}
