"""tpx3 subcommands, one module each (see tpx3lib.cli)."""
