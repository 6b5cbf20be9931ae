package views

import "github.com/a-h/templ"

// Link is a labelled URL.
type Link struct {
	Label  string
	Href   string
	Active bool
}

// Resource is a page about one resource or a list of them: a heading, the
// window selector, and the data fragment the page refreshes.
type Resource struct {
	Heading string
	// Kind names what the page shows ("namespaces", "namespace", ...), the
	// page's data-testid.
	Kind   string
	Crumbs []Link
	// Grafana is the resource's Grafana dashboard; empty hides the link.
	Grafana string
	Windows []Link
	Data    Data
	// Live, when set, is rendered below the data and is not refreshed with
	// it: the live calls panel keeps its own websocket.
	Live templ.Component
}

// Data is the part of a page that auto-refresh replaces.
type Data struct {
	// RefreshHref is fetched with the HX-Request header to get a new Data.
	RefreshHref string
	// RefreshEvery is an htmx interval, e.g. "5s".
	RefreshEvery string
	UpdatedAt    string
	// Banners name a failing backend and its error, or its warnings.
	Banners  []string
	Warnings []string
	// Notes qualify the figures of every panel of rates over the window,
	// e.g. a window not full yet; each such panel shows them.
	Notes []string
	// Alerts are about the mesh itself: a proxy's identity certificate near its end.
	Alerts  []string
	Summary *Summary
	Charts  []Chart
	Tables  []Table
	// Routes are the page's routes tables (a deployment's outbound routes, then its inbound ones).
	Routes []RouteTable
}

// RouteTable is the routes a workload calls, one row per route of each service.
type RouteTable struct {
	Title  string
	TestID string
	// Callers adds a column naming each row's calling workload (inbound routes).
	Callers bool
	Rows    []RouteRow
	// Empty is shown instead of rows when there are none; Error when a metric failed.
	Empty string
	Error string
}

// RouteRow is one route: its golden metrics, retries, timeouts and the backends of its traffic split.
type RouteRow struct {
	Caller   string // the calling workload, namespace/deployment (tables with Callers)
	Service  string // the route's service, name.namespace:port
	Name     string // the route's name; the default route's is "default"
	Success  Cell
	RPS      string
	P50      string
	P95      string
	P99      string
	Retries  string // per second, and their share of the route's tries
	Timeouts string // per second
	Backends []RouteBackend
	// TapHref opens the live tap on the route's requests.
	TapHref string
}

// RouteBackend is one backend of a route's traffic split.
type RouteBackend struct {
	Name    string
	Share   string // its observed part of the route's tries
	Success Cell
}

// Summary is the golden metrics of the page's own resource.
type Summary struct {
	Cells []SummaryCell
	// Error says which of the metrics could not be got; empty when all were.
	Error string
}

// SummaryCell is one big number.
type SummaryCell struct {
	Label  string
	Value  Cell
	TestID string
}

// Cell is a formatted value with its health class (ok, warn, bad, none).
type Cell struct {
	Text  string
	Class string
}

// Column is a sortable table header.
type Column struct {
	Label  string
	Href   string
	Sorted bool
}

// Table is a panel of golden metrics, one row per resource.
type Table struct {
	Title   string
	TestID  string
	Columns []Column
	Rows    []Row
	// Empty is shown instead of rows when there are none.
	Empty string
	// Error says what the panel could not get; empty when it got everything.
	Error string
	// Trend adds each row's Delta and Since after its success rate.
	Trend bool
	// Source is a quiet footnote saying where the figures come from; empty
	// shows none.
	Source string
	// MTLS adds each row's MTLS after its TCP connections (edges: whether they are secured).
	MTLS bool
}

// Row is one resource of a table.
type Row struct {
	Name    string
	Href    string
	Grafana string
	Meshed  string
	Success Cell
	RPS     string
	P50     string
	P95     string
	P99     string
	TCP     string
	// MTLS is the share of the row's traffic over mutual TLS (tables with MTLS).
	MTLS Cell
	// Delta is the change against the last hour; Since, for an unhealthy
	// row, since when it has been under the SLO (tables with Trend).
	Delta Cell
	Since string
}

// Chart is a server-side SVG line chart; geometry is computed by the caller.
type Chart struct {
	Title  string
	TestID string
	Width  int
	Height int
	Lines  []ChartLine
	// YLabels are axis labels from top to bottom, with their y positions.
	YLabels []AxisLabel
	XLabels []AxisLabel
	// Empty is shown when there is nothing to draw, Error when it failed.
	Empty string
	Error string
}

// ChartLine is one series as an SVG path; Class picks its colour (s0..s2).
type ChartLine struct {
	Name  string
	Class string
	Path  string
}

// AxisLabel is a tick label at a position in chart coordinates.
type AxisLabel struct {
	Text string
	X, Y int
}
