"""``catalog-cdc verify CONSUMER [--repair]``: a sink's contents against the database.

:mod:`~pipeline.verify.report` (the comparison and its report, pure),
:mod:`~pipeline.verify.base` (the :class:`~pipeline.verify.base.Verifier` protocol),
:mod:`~pipeline.verify.driver` (compare, repair, compare again), :mod:`~pipeline.verify.cli`.
The per-consumer parts: :mod:`consumers.search.verify`, :mod:`consumers.edge_kv.verify`.
See docs/verify.md.
"""
