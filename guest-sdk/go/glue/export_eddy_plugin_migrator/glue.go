// Package export_eddy_plugin_migrator forwards the `migrator` export to the eddy layer.
package export_eddy_plugin_migrator

import (
	"wit_component/eddy"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

func Migrate(previousVersion string) witTypes.Result[witTypes.Unit, string] {
	return eddy.ExportMigrate(previousVersion)
}
