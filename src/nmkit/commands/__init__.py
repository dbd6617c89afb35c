"""Sub-commands of the `nmkit` CLI, discovered automatically (one module per command or group)."""
