// Package export_eddy_plugin_broadcast_handler forwards the `broadcast-handler` export to the eddy layer.
package export_eddy_plugin_broadcast_handler

import (
	"wit_component/eddy"
	"wit_component/eddy_plugin_broadcast_handler"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

func HandleBroadcast(events []eddy_plugin_broadcast_handler.BroadcastEvent) []witTypes.Result[witTypes.Unit, string] {
	return eddy.ExportHandleBroadcast(events)
}
