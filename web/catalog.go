package web

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"html/template"
	"net/http"
	"net/url"

	"github.com/rejot-dev/rejot/catalog"
)

// Source gives the catalog's overview: a *catalog.Catalog or a *catalog.Lazy.
type Source interface {
	Overview(context.Context) (*catalog.Overview, error)
}

//go:embed catalog.html catalog.js
var files embed.FS

var pageTemplate = template.Must(template.New("catalog.html").Funcs(funcs).ParseFS(files, "catalog.html"))

var script = mustRead("catalog.js")

// The page loads nothing from elsewhere and runs no inline script: what
// html/template's escaping might ever miss still cannot run.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// CatalogPage serves the catalog page, which shows what is published, who
// subscribes and how they are doing, so that nobody has to type SQL to
// choose what to subscribe to:
//
//	GET /              the page (with ?fragment, its live part alone, which the page polls)
//	GET /catalog.json  the catalog's overview as JSON
//	GET /catalog.js    the page's script
//
// Mount it at a path that ends in a slash (the page's links are relative),
// e.g. mux.Handle("/catalog/", http.StripPrefix("/catalog", web.CatalogPage(lazy))).
// When the catalog is unreachable, the page and catalog.json answer 503
// with a message, and the page keeps polling until it is back.
func CatalogPage(src Source) http.Handler {
	return &catalogPage{src: src}
}

type catalogPage struct{ src Source }

func (p *catalogPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	switch r.URL.Path {
	case "":
		p.redirectToSlash(w, r)
	case "/":
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		p.servePage(w, r)
	case "/catalog.json":
		p.serveJSON(w, r)
	case "/catalog.js":
		h.Set("Content-Type", "text/javascript; charset=utf-8")
		w.Write(script)
	default:
		http.NotFound(w, r)
	}
}

// redirectToSlash sends a request for the mount point without its slash
// (possible under http.StripPrefix) to the page, whose links are relative.
func (p *catalogPage) redirectToSlash(w http.ResponseWriter, r *http.Request) {
	to := "/"
	if u, err := url.ParseRequestURI(r.RequestURI); err == nil && u.Path != "" {
		to = u.Path + "/"
	}
	if r.URL.RawQuery != "" {
		to += "?" + r.URL.RawQuery
	}
	http.Redirect(w, r, to, http.StatusMovedPermanently)
}

func (p *catalogPage) servePage(w http.ResponseWriter, r *http.Request) {
	o, err := p.src.Overview(r.Context())
	v := newView(o, err)
	name := "page"
	if r.URL.Query().Has("fragment") {
		name = "catalog"
	}
	var buf bytes.Buffer
	if err := pageTemplate.ExecuteTemplate(&buf, name, v); err != nil {
		http.Error(w, "cannot render the catalog page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(v.httpStatus())
	w.Write(buf.Bytes())
}

func (p *catalogPage) serveJSON(w http.ResponseWriter, r *http.Request) {
	o, err := p.src.Overview(r.Context())
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(map[string]string{"error": unavailableMessage(err)})
		return
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(o)
}

// unavailableMessage says why the catalog cannot be shown.
func unavailableMessage(err error) string {
	if errors.Is(err, catalog.ErrUnavailable) {
		return "The catalog is not reachable. The sidecar keeps trying to connect; this page shows the catalog as soon as it is back."
	}
	return "The catalog could not be read: " + err.Error()
}

func mustRead(name string) []byte {
	b, err := files.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return b
}
