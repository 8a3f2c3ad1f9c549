"""kidrr bench: latency, Recall@K and parity per backend and precision, side by side (docs/bench.md).

The parent process only plans, prepares bundles (exports run in a child process) and writes the
reports; each target (backend x precision) runs in its own worker process, one after another.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata

import click
from tqdm import tqdm

from kidrr import __version__, metrics
from kidrr.errors import InputError, KidrrError, describe
from kidrr import fileio
from kidrr.fileio import check_writable_folder, write_atomic

from . import dataset, parity, plots, report, sources
from .targets import BACKENDS, PRECISIONS, REFERENCE, parse_list, plan_targets

DEFAULT_OUT = "kidrr-bench-out"
FORMAT = "kidrr-bench/1"


def _command_line() -> str:
    """The command as typed (kidrr bench ..., kidrr-bench ... or python -m kidrr.bench.cli ...), for the report."""
    program = os.path.basename(sys.argv[0])
    prefix = ["python", "-m", "kidrr.bench.cli"] if program.endswith(".py") else [program]
    return shlex.join(prefix + sys.argv[1:])


def _ints(text: str, what: str) -> list:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise InputError(f"{what} must be integers >= 1, got {text!r}")
    return sorted(set(values))


def _host() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu or platform.machine()}, {os.cpu_count()} logical cores, {platform.system()}"


def _version(package: str):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_outputs(out: str, json_path: str | None) -> None:
    """Refuse unusable or foreign outputs before the run, so no report is lost and nothing else overwritten.

    --out may be new, empty, or a previous bench's folder (its results.json says so): kidrr bench
    overwrites its own reports there and nothing else. --json must be a file path, not a folder,
    and may replace only a previous bench JSON.
    """
    if os.path.lexists(out) and not os.path.isdir(out):
        raise InputError(f"--out {out} exists and is not a folder; give a folder for the reports")
    if os.path.isdir(out) and os.listdir(out) and fileio.report_format(os.path.join(out, "results.json")) != FORMAT:
        raise InputError(f"--out {out} is not empty and holds no kidrr bench results.json; the reports would "
                         f"overwrite files there. Choose a new or empty folder")
    check_writable_folder(out, "--out")
    if json_path:
        fileio.check_report_path(json_path, "--json", FORMAT)


def run_worker(spec: dict, work: str, bar) -> dict:
    """Run one target in a fresh interpreter; its PROGRESS lines become the bar's status."""
    tag = f"{spec['name']}-{spec['precision']}"
    spec_path, result_path = os.path.join(work, f"{tag}.spec.json"), os.path.join(work, f"{tag}.result.json")
    write_atomic(spec_path, json.dumps(spec).encode())
    threads = str(spec["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    # libgomp's default spin-wait collapses when other processes share the cores: measured here, a
    # 1-pair torch score call took 235 ms with 2 spinning threads and 0.8 ms with PASSIVE.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with open(os.path.join(work, f"{tag}.stderr.txt"), "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "kidrr.bench.worker", spec_path, result_path],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        for line in proc.stdout:
            if line.startswith("PROGRESS "):
                bar.set_postfix_str(f"{spec['name']} {spec['precision']}: {line[9:].strip()}"[:70])
        code = proc.wait()
        err.seek(0)
        stderr_tail = err.read().strip().splitlines()[-5:]
    if os.path.exists(result_path):
        with open(result_path) as fh:
            return json.load(fh)
    return {"status": "failed", "reason": f"worker exited with {code} without a result: "
                                          + (" | ".join(stderr_tail) or "no message")}


def bench(checkpoint, bundle, data, protocol, backends, precisions, threads, batch_sizes, duration, shortlists,
          parity_images, out, json_path, progress=True) -> dict:
    started = time.perf_counter()
    backends = parse_list(backends, BACKENDS, "backend(s)")
    precisions = parse_list(precisions, PRECISIONS, "precision(s)")
    batch_sizes = _ints(batch_sizes, "--batch-sizes")
    shortlists = _ints(shortlists, "--shortlists") if shortlists not in (None, "", "none") else []
    if duration <= 0:
        raise InputError(f"--duration must be > 0 seconds, got {duration}")
    if threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    out = os.path.abspath(out)
    json_path = os.path.abspath(json_path) if json_path else None
    check_outputs(out, json_path)
    targets, skipped = plan_targets(backends, precisions)
    wanted = sorted({t.precision for t in targets})
    log = (lambda msg: tqdm.write(msg, file=sys.stderr)) if progress else None
    if progress:
        print("kidrr bench: preparing bundles (exports are cached)", file=sys.stderr, flush=True)
    bundles, ck_dir, missing = sources.resolve_bundles(checkpoint, bundle, wanted, log)
    for precision, reason in missing:
        skipped += [(t.label, f"no {precision} bundle: {reason}") for t in targets if t.precision == precision]
    targets = [t for t in targets if t.precision in bundles]
    if ck_dir is None:
        skipped += [(t.label, "the torch reference needs the bundle's source checkpoint: pass --checkpoint")
                    for t in targets if t.is_reference]
        targets = [t for t in targets if not t.is_reference]
    targets.sort(key=lambda t: (not t.is_reference, list(BACKENDS).index(t.name), PRECISIONS.index(t.precision)))
    any_bundle = bundles.get("fp32") or next(iter(bundles.values()), None)
    split = dataset.load_test_split(data)
    metrics.folds(len(split.images), protocol)   # a split the protocol cannot take fails now, not in every worker
    if any_bundle:
        dataset.check_matches_model(split, sources.bundle_manifest(any_bundle)["model"], data)
    parity_n = len(split.images) if parity_images == 0 else min(parity_images, len(split.images))
    results = {}
    with tempfile.TemporaryDirectory(prefix="kidrr-bench-") as work:
        data_dir = os.path.abspath(data) if data else dataset.materialise(split, work)
        with tqdm(total=len(targets), desc="kidrr bench", unit="target", disable=not progress, file=sys.stderr) as bar:
            for t in targets:
                spec = {"name": t.name, "precision": t.precision, "backend": t.backend, "providers": t.providers,
                        "bundle": any_bundle if t.is_reference else bundles[t.precision],
                        "checkpoint": ck_dir, "data_dir": data_dir, "protocol": protocol, "threads": threads,
                        "batch_sizes": batch_sizes, "duration": duration, "shortlists": shortlists,
                        "parity_images": parity_n, "full": not t.is_reference,
                        "parity_scores": os.path.join(work, f"parity-{t.name}-{t.precision}.npy")}
                results[t.label] = run_worker(spec, work, bar)
                bar.update(1)
        reference = next((r for label, r in results.items() if label == f"{REFERENCE} fp32"), None)
        for label, r in results.items():
            if r.get("status") == "ok" and label != f"{REFERENCE} fp32":
                r["parity"] = parity.compare(r, reference, work)
    run = {"format": FORMAT, "wall_s": time.perf_counter() - started, "results": results,
           "skipped": skipped,
           "setup": {"command": _command_line(), "kidrr": __version__,
                     "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
                     "torch": _version("torch"), "host": _host(), "checkpoint": ck_dir, "bundles": bundles,
                     "data": data or "synthetic test set", "images": len(split.images),
                     "captions": len(split.captions), "protocol": protocol, "threads": threads,
                     "batch_sizes": batch_sizes, "duration_s": duration, "shortlists": shortlists,
                     "parity_images": parity_n}}
    written = plots.write_plots(results, out)
    run["files"] = [os.path.join(out, f) for f in ("results.json", "report.md", *written.values())]
    blob = json.dumps(run, indent=1).encode()
    write_atomic(os.path.join(out, "results.json"), blob)
    if json_path:
        write_atomic(json_path, blob)
        run["files"].append(json_path)
    write_atomic(os.path.join(out, "report.md"), report.markdown(run, written).encode())
    return run


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.option("--checkpoint", type=click.Path(file_okay=False), default=None,
              help="checkpoint folder (default: the shipped model)")
@click.option("--bundle", type=click.Path(file_okay=False), default=None,
              help="an exported bundle to bench (its precision); must come from --checkpoint")
@click.option("--data", type=click.Path(), default=None,
              help="folder in the published precomputed layout (test_ims.npy, test_caps.txt); default: synthetic test set")
@click.option("--protocol", type=click.Choice(["all", "1k", "5k", "5fold"]), default="5fold", show_default=True,
              help="folds to rank within (kidrr.metrics.folds; a split that does not fit is refused)")
@click.option("--backends", default="all", show_default=True, help=f"comma-separated: {', '.join(BACKENDS)}")
@click.option("--precisions", default="all", show_default=True, help=f"comma-separated: {', '.join(PRECISIONS)}")
@click.option("--threads", type=int, default=min(2, os.cpu_count() or 1), show_default=True,
              help="CPU threads per backend")
@click.option("--batch-sizes", default="1,4,16,64", show_default=True, help="latency batch sizes")
@click.option("--duration", type=float, default=0.3, show_default=True,
              help="seconds of timed calls per latency point (after 2 warm-up calls; at least 5 calls)")
@click.option("--shortlists", default="10,50", show_default=True, help="two-stage k' values ('none': skip)")
@click.option("--parity-images", type=int, default=100, show_default=True,
              help="images (with their captions) every target scores for parity with torch; 0: all")
@click.option("--out", "out", default=DEFAULT_OUT, show_default=True, help="folder for report.md, results.json, PNGs")
@click.option("--json", "json_path", default=None, help="also write the results JSON to this file")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.pass_context
def main(ctx, checkpoint, bundle, data, protocol, backends, precisions, threads, batch_sizes, duration, shortlists,
         parity_images, out, json_path, quiet):
    """Latency, Recall@K and parity per backend and precision; no arguments: the shipped model on the
    synthetic test set, every backend available here. `kidrr bench scale`: galleries on disk."""
    if ctx.invoked_subcommand:
        return
    if parity_images < 0:
        raise click.BadParameter("must be >= 0", param_hint="--parity-images")
    try:
        run = bench(checkpoint, bundle, data, protocol, backends, precisions, threads, batch_sizes, duration,
                    shortlists, parity_images, out, json_path, progress=not quiet)
    except (KidrrError, OSError) as exc:
        click.echo(f"kidrr bench: error: {describe(exc)}", err=True)
        sys.exit(2)
    click.echo(report.terminal(run))
    click.echo(f"\nwall time {run['wall_s']:.1f} s; wrote " + ", ".join(run["files"]))
    failed = [label for label, r in run["results"].items() if r.get("status") == "failed"]
    if failed:
        click.echo(f"kidrr bench: {len(failed)} target(s) failed: {', '.join(failed)}", err=True)
        sys.exit(1)


@main.command("scale", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--max-images", type=int, default=100_000, show_default=True,
              help="largest gallery of 10k / 100k / 1M (1M: ~25 GB of disk, tens of minutes)")
@click.option("--shortlists", default="50,100,200", show_default=True, help="k' values")
@click.option("--queries", type=int, default=60, show_default=True, help="text queries per configuration")
@click.option("--threads", type=int, default=min(2, os.cpu_count() or 1), show_default=True)
@click.option("--methods", default="ivf", show_default=True, help="ANN indexes to build: ivf and/or hnsw (hnsw up to 100k)")
@click.option("--locals-dtype", type=click.Choice(["fp16", "fp32", "int8"]), default="fp16", show_default=True,
              help="how the galleries store their locals")
@click.option("--precision-folds", type=int, default=1, show_default=True,
              help="5fold folds of the synthetic test set scored exhaustively per locals dtype (0: skip)")
@click.option("--work", default=None, help="folder for the galleries (default: a temporary one, deleted)")
@click.option("--keep", is_flag=True, help="keep the galleries")
@click.option("--out", default=DEFAULT_OUT, show_default=True, help="folder for scale.json, scale.md, scale_latency.png")
@click.option("--json", "json_path", default=None, help="also write the results JSON to this file")
@click.option("--checkpoint", default=None,
              help="model whose text queries are timed (default: the shipped synthetic model); with --data")
@click.option("--data", default=None,
              help="features folder ({split}_ims.npy + {split}_caps.txt) the items are drawn around (default: synthetic)")
@click.option("--split", "split_name", default="test", show_default=True, help="which split of --data")
@click.option("--quiet", is_flag=True)
def scale_command(max_images, shortlists, queries, threads, methods, locals_dtype, precision_folds, work, keep, out,
                  json_path, checkpoint, data, split_name, quiet):
    """Format-2 galleries of 10k / 100k (/ 1M) synthetic items at R=49, D=256: build, add, disk, open time,
    anonymous RSS, text-query latency for exact and ANN first stages, top-10 overlap, recall."""
    from .scale import run_scale
    from .scale_report import markdown
    try:
        kps = _ints(shortlists, "--shortlists")
        chosen = [m for m in methods.split(",") if m]
        if not chosen or set(chosen) - {"ivf", "hnsw"}:
            raise InputError(f"--methods must be ivf and/or hnsw, got {methods!r}")
        if queries < 16 or threads < 1 or precision_folds < 0 or precision_folds > 5:
            raise InputError("--queries must be >= 16, --threads >= 1, --precision-folds in 0..5")
        if json_path and os.path.isdir(json_path):     # found now, not after the whole run
            raise InputError(f"--json {json_path} is a folder; give a file name")
        if checkpoint and not data:
            raise InputError("--checkpoint needs --data: the synthetic images fit only the synthetic model")
        run = run_scale(max_images, kps, queries, threads, work, out, json_path, chosen, precision_folds, keep,
                        progress=not quiet, locals_dtype=locals_dtype, checkpoint=checkpoint, data=data,
                        split_name=split_name)
    except (KidrrError, OSError) as exc:
        click.echo(f"kidrr bench scale: error: {describe(exc)}", err=True)
        sys.exit(2)
    click.echo(markdown(run))
    click.echo(f"wall time {run['wall_s']:.0f} s; wrote {out}/scale.json, scale.md, scale_latency.png")


@main.command("indexing", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--photos", type=click.IntRange(min=10), default=2000, show_default=True, help="generated photos")
@click.option("--bundle", default=None, help="bundle with an image backbone (default: the shipped photo model)")
@click.option("--threads", type=click.IntRange(min=2), default=2, show_default=True,
              help="cores per engine: local threads = Ray CPUs on one node = Ray nodes of one CPU")
@click.option("--segment-photos", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--work", default=None, help="folder for the photos and galleries (default: a temporary one, deleted)")
@click.option("--out", default=DEFAULT_OUT, show_default=True, help="folder for indexing.json and indexing.md")
def indexing_command(photos, bundle, threads, segment_photos, work, out):
    """kidrr index throughput: local vs Ray 1 node x N CPUs vs Ray N nodes x 1 CPU, time per photo by stage."""
    from kidrr.photos.default_bundle import resolve_bundle
    from kidrr.photos.ray_index import require_ray
    from .indexing import markdown, run_indexing
    try:
        require_ray()
        run = run_indexing(photos, resolve_bundle(bundle), threads, segment_photos, work, out,
                           log=lambda m: click.echo(m, err=True))
    except (KidrrError, OSError) as exc:
        click.echo(f"kidrr bench indexing: error: {describe(exc)}", err=True)
        sys.exit(2)
    click.echo(markdown(run))


if __name__ == "__main__":
    main()
