"""A small async Kubernetes API client (its own kept-alive HTTP/1.1 connections for requests,
aiohttp for watches) and list+watch caches.

Layer between the services (controller, tokenservice) and the SDK/domain: it may import aiohttp
but never kopf. ``config`` loads a kubeconfig or the in-cluster configuration, ``client`` talks
to the API (get/list/watch/create/patch/delete with typed ``ApiError``, every call with a
deadline; ``http`` is its request transport), ``caches`` keeps a watched collection in memory
with a ``synced`` event, ``health`` probes whether the API server answers at all, ``jsontext``
is the compact JSON (orjson when installed) of the client, the dev cluster and the token service.
"""
