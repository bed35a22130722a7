"""``catalog-cdc run``: every service of the pipeline as a supervised child process.

``config`` reads and validates the TOML file and builds the command lines,
``supervisor`` runs them (restarts with backoff, prefixed logs, ordered stop),
``cli`` is the subcommand.  Guide: docs/run.md.
"""
