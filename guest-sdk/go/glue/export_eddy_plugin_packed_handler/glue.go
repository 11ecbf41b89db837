// Package export_eddy_plugin_packed_handler forwards the `packed-handler` export to the eddy layer.
package export_eddy_plugin_packed_handler

import (
	"wit_component/eddy"
	"wit_component/eddy_plugin_packed_handler"
)

func HandlePacked(events eddy_plugin_packed_handler.PackedEvents) eddy_plugin_packed_handler.PackedOutcomes {
	return eddy.ExportHandlePacked(events)
}
