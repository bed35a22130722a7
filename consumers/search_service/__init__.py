"""The hosted search service consumer (``catalog-cdc consume search-service``).

``sink`` (the sink), ``mapping`` (documents -> the Update API's objects and schema),
``rules`` (the seed's request rules, shared with the contract server), ``client``
(HTTP calls, what the answers mean, :func:`~consumers.search_service.client.status`),
``state`` (the SQLite state file).  ``python -m consumers.search_service`` shows the
service's status and resets the circuit breaker.  See ``docs/search-service.md``.
"""
