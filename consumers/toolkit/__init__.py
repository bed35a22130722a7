"""What the sinks repeat, written once.

* :mod:`consumers.toolkit.batching` — :func:`~consumers.toolkit.batching.chunks`: cut a
  stream of items into requests by count and by bytes, lazily.
* :mod:`consumers.toolkit.headers` — :func:`~consumers.toolkit.headers.retry_after`:
  both forms of the ``Retry-After`` header.
* :mod:`consumers.toolkit.ledger` — a sink's SQLite state file, with one durability
  policy (WAL, ``synchronous=FULL``) and one transaction helper.

Nothing here imports a sink; every sink may import from here.
"""
