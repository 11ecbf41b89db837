// Package export_eddy_plugin_lookup_planner forwards the `lookup-planner` export to the eddy layer.
package export_eddy_plugin_lookup_planner

import (
	"wit_component/eddy"
	"wit_component/eddy_plugin_lookup_planner"
	"wit_component/eddy_plugin_types"
)

func Prepare(events []eddy_plugin_types.Event) [][]eddy_plugin_lookup_planner.LookupRequest {
	return eddy.ExportPrepare(events)
}
