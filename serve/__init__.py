"""kidrr.serve: the retrieval service (FastAPI on uvicorn or Ray Serve) and its Python client.

    kidrr serve --bundle B --gallery G [--engine local|ray] [--shards S] [--replicas N]
    from kidrr.serve import Client

Imports nothing heavy at import time: the serving stack is the optional 'serve' extra.
See docs/serve.md.
"""


def __getattr__(name):
    if name in ("Client", "ServiceError"):
        from . import client
        return getattr(client, name)
    raise AttributeError(name)


__all__ = ["Client", "ServiceError"]
