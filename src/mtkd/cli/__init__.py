"""The `mtkd` command line."""
