"""kidrr serve: the retrieval service, one uvicorn process (local) or a Ray Serve application (ray).

Everything it answers from is verified before it listens: a bad bundle, gallery, ids or captions
file stops the command with a message and exit status 2, and no port is opened.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
import threading

import click

from kidrr.errors import ConfigError, KidrrError, describe

SERVE_DEPS = ("fastapi", "uvicorn", "httpx", "prometheus_client")
EXTRA_HINT = 'pip install -e ".[serve]"   (or: pip install "kidrr[serve]")'
TOKEN_ENV = "KIDRR_SERVE_TOKEN"


def require(modules) -> None:
    """Import the serving stack or stop with the extra to install."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise click.ClickException(f"kidrr serve needs the 'serve' extra (missing: {', '.join(missing)}); "
                                   f"install it with: {EXTRA_HINT}")


BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def one_blas_thread() -> None:
    """numpy's BLAS pool off (unless the caller chose): the batch workers and onnxruntime's own threads
    are the parallelism, and BLAS threads spinning next to them on a busy machine made the globals
    shortlist of 10k items take 16 ms instead of 1 ms here. Must run before numpy is imported."""
    if "numpy" not in sys.modules:
        for name in BLAS_THREAD_VARS:
            os.environ.setdefault(name, "1")


def read_token(token_file: str | None) -> str | None:
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {token_file}: {exc}") from exc
        if not token:
            raise ConfigError(f"the token file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", default=None, type=click.Path(),
              help="bundle folder (kidrr export onnx); default: the one kidrr index recorded for the first "
                   "gallery, else the shipped real-photo model")
@click.option("--gallery", "galleries", required=True, multiple=True, type=click.Path(),
              help="a .npz gallery file (Gallery.save) cut into --shards parts, or format-2 gallery folders "
                   "(kidrr gallery), one per shard: repeat --gallery")
@click.option("--ids", "ids_path", type=click.Path(), default=None,
              help="one id per gallery row, in row order (default: row numbers)")
@click.option("--captions", "captions_path", type=click.Path(), default=None,
              help="captions that image queries search, one per line (optional)")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--shards", type=click.IntRange(1), default=1, show_default=True, help="parts of the gallery")
@click.option("--replicas", type=click.IntRange(1), default=1, show_default=True, help="ray: replicas per shard")
@click.option("--address", default=None, help="ray: join this cluster (default: start a local Ray, stop it on exit)")
@click.option("--num-cpus", type=click.IntRange(1), default=None, help="ray: CPUs of the local Ray it starts")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--token-file", type=click.Path(), default=None,
              help=f"file holding the bearer token (default: ${TOKEN_ENV}); needed for a non-loopback host")
@click.option("--insecure", is_flag=True, help="allow a non-loopback host without a token")
@click.option("--threads", type=click.IntRange(0), default=1, show_default=True,
              help="onnxruntime threads per session (local process, each ray replica)")
@click.option("--workers", type=click.IntRange(1, 32), default=2, show_default=True,
              help="local: search batches run at once (one thread each)")
@click.option("--max-batch", type=click.IntRange(1, 256), default=4, show_default=True,
              help="queries encoded and searched together")
@click.option("--batch-wait-ms", type=click.FloatRange(0, 1000), default=5.0, show_default=True)
@click.option("--max-queue", type=click.IntRange(1), default=64, show_default=True,
              help="waiting requests before 503")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.01), default=10.0, show_default=True,
              help="seconds per request before 504")
@click.option("--max-k", type=click.IntRange(1), default=100, show_default=True)
@click.option("--max-shortlist", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--max-body-bytes", type=click.IntRange(1024), default=8 << 20, show_default=True)
@click.option("--max-regions", type=click.IntRange(1), default=256, show_default=True,
              help="regions per image sent as features")
@click.option("--max-upload-bytes", type=click.IntRange(1024), default=8 << 20, show_default=True,
              help="an uploaded image file (/v1/search/captions/image)")
@click.option("--max-upload-pixels", type=click.IntRange(1), default=24_000_000, show_default=True,
              help="an uploaded image's pixels, read from its header before decoding")
@click.option("--max-heavy", type=click.IntRange(1), default=8, show_default=True,
              help="score / encode / image requests admitted at once before 503")
@click.option("--no-ui", is_flag=True, help="do not serve the search page at / (the API only)")
@click.option("--reload-check-s", type=click.FloatRange(0), default=1.0, show_default=True,
              help="how often a format-2 gallery is checked for a new generation")
def main(bundle, galleries, ids_path, captions_path, engine, shards, replicas, address, num_cpus, host, port,
         token_file, insecure, threads, workers, max_batch, batch_wait_ms, max_queue, timeout_s, max_k, max_shortlist,
         max_body_bytes, max_regions, max_upload_bytes, max_upload_pixels, max_heavy, reload_check_s, no_ui):
    """Serve a bundle and a gallery over HTTP (docs/serve.md)."""
    one_blas_thread()
    require(SERVE_DEPS + (("ray.serve",) if engine == "ray" else ()))
    from .settings import Limits, Settings, check_bind
    try:
        token = read_token(token_file)
        check_bind(host, token, insecure)
        settings = Settings(Limits(max_k=max_k, max_shortlist=max_shortlist, max_body_bytes=max_body_bytes,
                                   max_regions=max_regions, max_upload_bytes=max_upload_bytes,
                                   max_upload_pixels=max_upload_pixels),
                            max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_queue=max_queue,
                            timeout_s=timeout_s, token=token, workers=workers, max_heavy=max_heavy,
                            reload_check_s=reload_check_s, ui=not no_ui)
        if bundle is None:
            from kidrr.photos.search import bundle_for
            bundle = bundle_for(galleries[0], None)[0]
        if engine == "local":
            serve_local(bundle, galleries, ids_path, captions_path, settings, shards, host, port, threads)
        else:
            serve_ray(bundle, galleries, ids_path, captions_path, settings, shards, replicas, address, num_cpus,
                      host, port, threads)
    except (KidrrError, OSError) as exc:
        click.echo(f"kidrr serve: {type(exc).__name__}: {describe(exc)}", err=True)
        sys.exit(2)


def _verified(bundle, galleries, ids_path, captions_path, shards, threads):
    from kidrr.runtime import Retriever

    from .catalog import open_catalog
    retriever = Retriever(bundle, threads=threads)          # verifies the format and every sha256
    catalog, sources = open_catalog(retriever, list(galleries), shards, ids_path, captions_path)
    return retriever, catalog, sources


def serve_local(bundle, galleries, ids_path, captions_path, settings, shards, host, port, threads):
    import uvicorn

    from .api import create_app
    from .engine import LocalEngine
    retriever, catalog, sources = _verified(bundle, galleries, ids_path, captions_path, shards, threads)
    app = create_app(LocalEngine(retriever, catalog, sources, settings), settings)
    click.echo(f"kidrr serve: local engine, {catalog.size} items in {len(sources)} shard(s), bundle "
               f"{retriever.bundle_id[:12]}..., http://{host}:{port}/docs", err=True)
    # On SIGTERM / Ctrl-C uvicorn stops accepting, lets in-flight requests finish, then stops the engine.
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=settings.timeout_s + 5)


def serve_ray(bundle, galleries, ids_path, captions_path, settings, shards, replicas, address, num_cpus, host,
              port, threads):
    retriever, catalog, sources = _verified(bundle, galleries, ids_path, captions_path, shards, threads)
    del sources, retriever                                 # the replicas open their own parts
    from . import ray_engine
    started = ray_engine.start_ray(address, num_cpus)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        app = ray_engine.build_application(os.path.abspath(bundle), catalog, settings, replicas, threads)
        ray_engine.deploy(app, host, port)
        click.echo(f"kidrr serve: ray engine, {catalog.size} items in {len(catalog.shards)} shard(s) x {replicas} "
                   f"replica(s), http://{host}:{port}/docs", err=True)
        stop.wait()
    finally:
        ray_engine.stop_ray(started)


if __name__ == "__main__":
    main()
