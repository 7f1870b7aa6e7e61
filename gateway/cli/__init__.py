"""The command line: depin-gateway's subcommands, the demo and first boot."""
