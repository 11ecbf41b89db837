// Package export_eddy_plugin_keyed_visitor forwards the `keyed-visitor` export to the eddy layer.
package export_eddy_plugin_keyed_visitor

import (
	"wit_component/eddy"
	"wit_component/eddy_plugin_keyed_visitor"
)

func Visit(tag string, state string, entries []eddy_plugin_keyed_visitor.VisitedEntry) []eddy_plugin_keyed_visitor.VisitAction {
	return eddy.ExportVisit(tag, state, entries)
}
