package main

// Links the plugin's package, whose init function calls eddy.Register.
import _ "wit_component/plugin"
