// Package static embeds the dashboard's stylesheet and scripts. htmx is
// vendored from the npm registry (htmx.org 2.0.11, dist/htmx.min.js); its
// version is in its file name so a cached copy never outlives an upgrade.
package static

import "embed"

// FS holds every asset, served under {base-path}/static/.
//
//go:embed *.css *.js
var FS embed.FS

// HTMX is the file name of the vendored htmx build inside FS.
const HTMX = "htmx-2.0.11.min.js"
