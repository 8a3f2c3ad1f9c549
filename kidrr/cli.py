"""`kidrr VERB`: one front door over every kidrr command, listed in the order data flows through them.

Each verb is the very click command of its module (the `kidrr-*` scripts stay as aliases of the same
objects), imported only when it runs or shows its help, so `kidrr --help` needs neither torch nor
onnxruntime. The example each verb's help ends with is attached here, once, for both spellings.
"""
from __future__ import annotations

import importlib

import click

from . import __version__

# (verb, "module:attribute", one-line summary, one example). The order is the data flow:
# pictures -> features -> checkpoint -> bundle -> gallery -> answers, then the measurements.
VERBS = (
    ("render", "kidrr.render:main", "draw the synthetic scenes as PNG photos with captions",
     "kidrr render --out pix --train 1500 --dev 200 --test 500"),
    ("features", "kidrr.images.features:main", "photos + captions -> region features (the training data layout)",
     "kidrr features --images photos/ --captions train.tsv --split train --out data/"),
    ("train", "kidrr.train:main", "train a KIDRR checkpoint on features (or the synthetic set)",
     "kidrr train --data synthetic --out runs/synth --epochs 3"),
    ("eval", "kidrr.evaluate:main", "Recall@K of a checkpoint on a split",
     "kidrr eval --split test --protocol 5fold"),
    ("export", "kidrr.export.cli:main", "checkpoint -> ONNX bundle (onnx), its lint, TensorRT engines (trt)",
     "kidrr export onnx --out bundle/"),
    ("index", "kidrr.photos.index:main", "photos (or encoded vectors) -> a searchable gallery",
     "kidrr index --images ~/Pictures/trip --out trip.gallery"),
    ("gallery", "kidrr.gallery.cli:main", "a gallery on disk: create, add, remove, compact, info, verify...",
     "kidrr gallery info trip.gallery"),
    ("search", "kidrr.photos.search:main", "a gallery's items ranked for a sentence, a photo or a stored item",
     'kidrr search --gallery trip.gallery "a dog running on the beach" -k 10'),
    ("serve", "kidrr.serve.cli:main", "the same search over HTTP (FastAPI, or Ray Serve shards)",
     "kidrr serve --gallery trip.gallery"),
    ("bench", "kidrr.bench.cli:main", "latency, Recall@K, parity per backend; `scale`: galleries",
     "kidrr bench"),
)

# Subcommands of the groups, with theirs.
SUB_EXAMPLES = {
    ("export", "onnx"): "kidrr export onnx --checkpoint runs/synth/best --out bundle/",
    ("export", "lint"): "kidrr export lint --bundle bundle/",
    ("export", "trt"): "kidrr export trt --bundle bundle/ --precision fp16",
    ("bench", "scale"): "kidrr bench scale --max-images 100000",
    ("gallery", "create"): "kidrr gallery create photos.gallery --bundle bundle/ --regions 49",
    ("gallery", "add"): "kidrr gallery add photos.gallery --globals g.npy --locals l.npy --ids ids.txt",
    ("gallery", "remove"): "kidrr gallery remove photos.gallery img001.jpg",
    ("gallery", "compact"): "kidrr gallery compact photos.gallery",
    ("gallery", "info"): "kidrr gallery info photos.gallery --json",
    ("gallery", "verify"): "kidrr gallery verify photos.gallery",
    ("gallery", "search"): 'kidrr gallery search photos.gallery "a dog on the grass" -k 5 --shortlist 100',
    ("gallery", "duplicates"): "kidrr gallery duplicates photos.gallery --threshold 0.97",
    ("gallery", "convert"): "kidrr gallery convert old.npz photos.gallery",
}


def _example(text: str) -> str:
    # \b keeps click from re-wrapping the example into the paragraph above it.
    return f"\b\nExample:\n  {text}"


def load_verb(name: str) -> click.Command:
    """The click command behind `kidrr NAME` (the same object its `kidrr-NAME` script runs)."""
    for verb, target, _, example in VERBS:
        if verb == name:
            module, attr = target.split(":")
            cmd = getattr(importlib.import_module(module), attr)
            if not getattr(cmd, "_kidrr_examples", False):
                if verb == "gallery":
                    _add_gallery_shortcuts(cmd)
                cmd.epilog = _example(example)
                if isinstance(cmd, click.Group):
                    for sub, sub_cmd in cmd.commands.items():
                        if (verb, sub) in SUB_EXAMPLES:
                            sub_cmd.epilog = _example(SUB_EXAMPLES[verb, sub])
                cmd._kidrr_examples = True
            return cmd
    raise KeyError(name)


def _add_gallery_shortcuts(group: click.Group) -> None:
    """`kidrr gallery add` and `kidrr gallery search`: thin shortcuts of `kidrr index` and `kidrr search`
    (same options, output and exit codes), built from those commands so the two can never drift apart.
    They are added here because the gallery package sits below the photo commands they call."""
    from kidrr.photos.index import gallery_add_command
    from kidrr.photos.search import gallery_search_command
    group.add_command(gallery_add_command(), "add")
    group.add_command(gallery_search_command(), "search")


class VerbGroup(click.Group):
    """Lists the verbs in data-flow order from the table above, importing none of them to do so."""

    def list_commands(self, ctx):
        return [v[0] for v in VERBS]

    def get_command(self, ctx, name):
        try:
            return load_verb(name)
        except KeyError:
            return None

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands (in the order data flows through them)"):
            formatter.write_dl([(verb, summary) for verb, _, summary, _ in VERBS])


@click.group(cls=VerbGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="\b\nEach verb has its own --help with an example; `kidrr-VERB` is the same command "
                    "(e.g. kidrr bench).\nStart with: kidrr bench   or   kidrr index --images DIR --out G")
@click.version_option(__version__, prog_name="kidrr")
def main():
    """kidrr: train, export, index, search, serve and benchmark KIDRR image-text matching models."""


def alias(verb: str):
    """Entry point of the `kidrr-VERB` script: the same command as `kidrr VERB`, with its example."""
    def run(*args, **kwargs):
        return load_verb(verb)(*args, **kwargs)
    run.__name__ = f"kidrr_{verb}"
    return run


# The `kidrr-*` console scripts (setup.py): aliases kept because users and scripts type them.
render, features, train, eval_, export, index = (alias(v) for v in ("render", "features", "train", "eval", "export",
                                                                     "index"))
gallery, search, serve, bench = (alias(v) for v in ("gallery", "search", "serve", "bench"))


if __name__ == "__main__":
    main()
