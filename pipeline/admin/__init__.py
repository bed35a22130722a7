"""The admin HTTP API (``catalog-cdc admin serve``): search sync, replays, jobs, status.

:mod:`pipeline.admin.app` (the FastAPI app and ``AdminSettings``),
:mod:`~pipeline.admin.tokens` (hashed tokens with roles), :mod:`~pipeline.admin.jobs`
(background replay jobs), :mod:`~pipeline.admin.status` (consumer state and lag),
:mod:`~pipeline.admin.sinks` (each consumer's sink, asked for its capabilities),
:mod:`~pipeline.admin.cli`.  See docs/admin-api.md.
"""
