"""``catalog-cdc consume storefront-api``: products into a shop's products sync API.

Modules: :mod:`.sink` (the sink), :mod:`.client` (HTTP, JWT), :mod:`.mapping`
(document -> API product), :mod:`.rules` (the API's field rules, shared with the
contract server), :mod:`.state` (the durable map of what the shop has, and
:func:`~consumers.storefront_api.state.status`).
"""
