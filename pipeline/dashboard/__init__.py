"""``catalog-cdc dashboard``: a live terminal view of the pipeline from the services'
Prometheus ``/metrics`` (docs/dashboard.md).

``model`` parses the metrics and computes rates and statuses, ``scrape`` reads the
targets, ``render`` draws, ``cli`` is the subcommand; ``demo`` holds the helpers of
``make demo`` (free ports, resetting the demo consumers, the proof).
"""
