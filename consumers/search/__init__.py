"""``catalog-cdc consume search``: product documents into an Elasticsearch index.

See :mod:`consumers.search.sink` (writes) and :mod:`consumers.search.query` (the
``catalog-cdc search`` command).
"""
