package web

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/rejot-dev/rejot/catalog"
)

// lineage is the picture of where data flows: owner systems on the left,
// the publication versions they publish in the middle, the subscribing
// systems and their target tables on the right. It is laid out here, in
// pixels, and drawn by the template as inline SVG.
type lineage struct {
	Width, Height int
	Columns       []heading
	Nodes         []node
	Edges         []edge
}

type heading struct {
	X     int
	Title string
}

// node is a box with a title line and a detail line.
type node struct {
	ID         string // data-node, e.g. owner:shop, version:orders/1, target:billing/billing.orders
	Kind       string // owner, version or target
	Status     string // a CSS class, or ""
	Href       string // where clicking it goes, or ""
	X, Y, W, H int
	Title      string
	Detail     string
	Tooltip    string
}

type edge struct {
	From, To string
	Status   string // a CSS class: the subscription's status, or "own"
	Path     string // SVG path data
	Label    string
	LabelX   int
	LabelY   int
}

const (
	pad      = 16
	headingH = 34
	rowH     = 62
	boxH     = 46
	groupGap = 14
	colGap   = 230
	labelRun = 150 // the straight end of a labelled arrow
	charW    = 7.3 // a character's width at the page's 13px, near enough
	textPad  = 28  // the room left and right of a box's text
	minBoxW  = 150
	maxBoxW  = 300
)

func layoutLineage(o *catalog.Overview) *lineage {
	if len(o.Publications) == 0 {
		return nil
	}
	versions := append([]catalog.PublicationVersion(nil), o.Publications...)
	sort.SliceStable(versions, func(i, j int) bool { return versions[i].Owner < versions[j].Owner })
	ownerW, versionW, targetW := columnWidths(versions)
	x1 := pad + ownerW + colGap
	x2 := x1 + versionW + colGap
	l := &lineage{Columns: []heading{{pad, "Owner"}, {x1, "Publication version"}, {x2, "Subscriber · target table"}}}
	l.Width = x2 + max(targetW, headingWidth(l.Columns[2].Title)) + pad
	y := pad + headingH
	for i := 0; i < len(versions); {
		j := i + 1
		for j < len(versions) && versions[j].Owner == versions[i].Owner {
			j++
		}
		if i > 0 {
			y += groupGap
		}
		at := len(l.Nodes)
		l.Nodes = append(l.Nodes, node{}) // the owner's, once its versions are placed
		var first, last node
		for k, v := range versions[i:j] {
			var vn node
			y, vn = l.addVersion(v, x1, x2, y, versionW, targetW)
			if k == 0 {
				first = vn
			}
			last = vn
		}
		// Centred on its versions, so that its arrows fan out evenly.
		l.Nodes[at] = ownerNode(versions[i], pad, (first.Y+last.Y)/2, ownerW)
		i = j
	}
	l.Height = y + pad
	l.Edges = append(ownerEdges(l), l.Edges...)
	return l
}

// addVersion lays out a version at y, centred beside its subscribers, one
// row each, and returns where the next one goes and the version's box.
func (l *lineage) addVersion(v catalog.PublicationVersion, x1, x2, y, versionW, targetW int) (int, node) {
	slotH := max(1, len(v.Subscriptions)) * rowH
	vn := versionNode(v, x1, y+(slotH-boxH)/2, versionW)
	l.Nodes = append(l.Nodes, vn)
	for i, s := range v.Subscriptions {
		tn := targetNode(s, x2, y+i*rowH+(rowH-boxH)/2, targetW)
		l.Nodes = append(l.Nodes, tn)
		l.Edges = append(l.Edges, connect(vn, tn, statusClass(s.Status), subscriptionSummary(s)))
	}
	return y + slotH, vn
}

func ownerEdges(l *lineage) []edge {
	var edges []edge
	var owner node
	for _, n := range l.Nodes {
		switch n.Kind {
		case "owner":
			owner = n
		case "version":
			edges = append(edges, connect(owner, n, "own", ""))
		}
	}
	return edges
}

func columnWidths(versions []catalog.PublicationVersion) (owner, version, target int) {
	for _, v := range versions {
		owner = max(owner, boxWidth(v.Owner, "database "+v.Database))
		version = max(version, boxWidth(versionTitle(v), versionDetail(v)))
		for _, s := range v.Subscriptions {
			target = max(target, boxWidth(s.System, s.Target))
		}
	}
	return owner, version, max(target, minBoxW)
}

// headingWidth is a column heading's width: upper case, spaced out.
func headingWidth(s string) int { return int(float64(utf8.RuneCountInString(s)) * 8.6) }

func boxWidth(lines ...string) int {
	n := 0
	for _, s := range lines {
		n = max(n, utf8.RuneCountInString(s))
	}
	return min(max(int(math.Ceil(float64(n)*charW))+textPad, minBoxW), maxBoxW)
}

func ownerNode(v catalog.PublicationVersion, x, y, w int) node {
	return fit(node{ID: "owner:" + v.Owner, Kind: "owner", X: x, Y: y, W: w, H: boxH,
		Title: v.Owner, Detail: "database " + v.Database})
}

func versionNode(v catalog.PublicationVersion, x, y, w int) node {
	n := fit(node{ID: fmt.Sprintf("version:%s/%d", v.Publication, v.Version), Kind: "version",
		Status: statusClass(v.Status), Href: "#" + anchor(v.Publication, v.Version),
		X: x, Y: y, W: w, H: boxH, Title: versionTitle(v), Detail: versionDetail(v)})
	if len(v.Tables) > 0 {
		n.Tooltip += "\nreads " + strings.Join(v.Tables, ", ")
	}
	return n
}

func targetNode(s catalog.SubscriptionStatus, x, y, w int) node {
	return fit(node{ID: "target:" + s.System + "/" + s.Target, Kind: "target", Status: statusClass(s.Status),
		X: x, Y: y, W: w, H: boxH, Title: s.System, Detail: s.Target})
}

func versionTitle(v catalog.PublicationVersion) string {
	return fmt.Sprintf("%s v%d.%d", v.Publication, v.Version, v.Minor)
}

func versionDetail(v catalog.PublicationVersion) string {
	detail := v.Status
	if v.Status == "deprecated" && v.Sunset != "" {
		detail = "deprecated · sunset " + v.Sunset
	}
	if len(v.Tables) > 1 { // a join: how many tables it reads (all of them in the tooltip)
		detail += fmt.Sprintf(" · joins %d tables", len(v.Tables))
	}
	return detail
}

// fit shortens the lines to the box, keeping them whole in the tooltip.
func fit(n node) node {
	n.Tooltip = n.Title + "\n" + n.Detail
	room := int(float64(n.W-textPad)/charW + 1e-9)
	n.Title, n.Detail = truncate(n.Title, room), truncate(n.Detail, room)
	return n
}

func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:max(n-1, 1)]) + "…"
}

// connect draws a curve from the right of a to the left of b. An arrow
// with a label ends in a straight run, and the label sits above it, clear
// of the arrows fanning out beside it.
func connect(a, b node, status, label string) edge {
	x1, y1 := a.X+a.W, a.Y+a.H/2
	x2, y2 := b.X-2, b.Y+b.H/2 // the arrowhead's tip touches the box
	xc := x2
	if label != "" {
		xc = x2 - labelRun
	}
	bend := (xc - x1) / 2
	path := fmt.Sprintf("M%d,%d C%d,%d %d,%d %d,%d", x1, y1, x1+bend, y1, xc-bend, y2, xc, y2)
	if xc != x2 {
		path += fmt.Sprintf(" L%d,%d", x2, y2)
	}
	return edge{From: a.ID, To: b.ID, Status: status, Label: label, LabelX: x2 - 10, LabelY: y2 - 7, Path: path}
}
