"""A small async Kubernetes API client (aiohttp) and list+watch caches.

Layer between the services (controller, tokenservice) and the SDK/domain: it may import aiohttp
but never kopf. ``config`` loads a kubeconfig or the in-cluster configuration, ``client`` talks
to the API (get/list/watch/create/patch/delete with typed ``ApiError``, every call with a
deadline), ``caches`` keeps a watched collection in memory with a ``synced`` event, ``health``
probes whether the API server answers at all.
"""
