// Package export_eddy_plugin_handler forwards the `handler` export to the eddy layer.
package export_eddy_plugin_handler

import (
	"wit_component/eddy"
	"wit_component/eddy_plugin_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

func Init(config string) witTypes.Result[witTypes.Unit, string] { return eddy.ExportInit(config) }

func Handle(events []eddy_plugin_types.Event) []eddy_plugin_types.Outcome {
	return eddy.ExportHandle(events)
}
