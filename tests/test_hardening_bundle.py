"""Identity from what changes the numbers; every manifest
field typed and ranged by the one bundle loader, which lint and the runtime share; the manifest
cross-checked against the graphs' real inputs."""
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from kidrr.errors import BundleError
from kidrr.export.bundle import export_bundle
from kidrr.export.cli import main as export_cli
from kidrr.export.lint import lint_bundle
from kidrr.runtime import load_bundle, open_bundle
from test_hardening_files import QUIET, tiny_checkpoint_and_bundle


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return tiny_checkpoint_and_bundle(tmp_path_factory.mktemp("hb"))


# ---- identity --------------------------------------------------------------------------------
def test_reexport_keeps_the_identity_and_saved_galleries(made, tmp_path):
    ck, bundle, _ = made
    feats = np.random.default_rng(0).normal(size=(3, 4, 12)).astype(np.float32)
    with open_bundle(bundle) as rt:
        first = rt.bundle_id
        rt.encode_images(feats).save(str(tmp_path / "g.npz"))
    again = str(tmp_path / "again")
    export_bundle(ck, again, **QUIET)
    with open_bundle(again) as rt:
        assert rt.bundle_id == first
        assert len(rt.load_gallery(str(tmp_path / "g.npz"))) == 3
    other = str(tmp_path / "int8")
    export_bundle(ck, other, precision="int8-dynamic", **QUIET)   # static int8 would need calibration data
    assert load_bundle(other).identity != first                        # other numbers, other identity


@pytest.mark.parametrize("field", ["exporter", "source_checkpoint_sha256", "export_seconds", "verification"])
def test_identity_ignores_fields_that_do_not_change_numbers(made, tmp_path, field):
    copy = str(tmp_path / "b")
    shutil.copytree(made[1], copy)
    path = os.path.join(copy, "manifest.json")
    manifest = json.load(open(path))
    manifest[field] = {"edited": 1}
    json.dump(manifest, open(path, "w"))
    assert load_bundle(copy).identity == load_bundle(made[1]).identity


def test_manifest_holds_nothing_a_reexport_changes(made, tmp_path):
    """Timings and the verification report live in export_report.json, and two exports of one
    checkpoint write the same manifest."""
    ck, bundle, _ = made
    again = str(tmp_path / "again")
    export_bundle(ck, again, **QUIET)
    manifest = json.load(open(os.path.join(bundle, "manifest.json")))
    assert not {"export_seconds", "verification"} & set(manifest)
    report = json.load(open(os.path.join(bundle, "export_report.json")))
    assert set(report["export_seconds"]) == {"image_encoder", "text_encoder", "similarity"}
    assert open(os.path.join(bundle, "manifest.json"), "rb").read() == open(os.path.join(again, "manifest.json"),
                                                                            "rb").read()


# ---- manifest fields --------------------------------------------------------------
def _set(path, value):
    def edit(m):
        *head, last = path
        for k in head:
            m = m[k]
        if value is DEL:
            del m[last]
        else:
            m[last] = value(m[last]) if callable(value) else value
    return edit


DEL = object()
EDITS = {
    "manifest is a list": (lambda m: [m], "must hold a JSON object"),
    "graphs is a list": (_set(["graphs"], lambda g: list(g.values())), "'graphs' is missing or not an object"),
    "files is a list": (_set(["files"], lambda f: list(f)), "'files' is missing or not an object"),
    "precision int4": (_set(["precision"], "int4"), "precision 'int4'"),
    "precision removed": (_set(["precision"], DEL), "precision None"),
    "feature_size a string": (_set(["model", "feature_size"], "12"), "feature_size"),
    "embed_size 2.5": (_set(["model", "embed_size"], 2.5), "embed_size"),
    "feature_size removed": (_set(["model", "feature_size"], DEL), "lacks feature_size"),
    "model removed": (_set(["model"], DEL), "'model' is missing"),
    "max_caption_len a string": (_set(["tokenizer", "max_caption_len"], "64"), "max_caption_len"),
    "vocab removed": (_set(["tokenizer", "vocab"], DEL), "tokenizer vocab"),
    "inputs removed": (_set(["graphs", "similarity", "inputs"], DEL), "inputs must be a non-empty list"),
    "dtype unknown": (_set(["graphs", "text_encoder", "inputs"], lambda v: [dict(v[0], dtype="int4")] + v[1:]),
                      "dtype 'int4'"),
    "sha256 an int": (_set(["graphs", "similarity", "sha256"], 12345), "64-digit"),
    "graph file ../": (_set(["graphs", "similarity", "file"], "../similarity.onnx"), "outside the bundle"),
    "files ../": (_set(["files"], lambda f: dict(f, **{"../../etc/passwd": "0" * 64})), "outside the bundle"),
    "absolute file": (_set(["graphs", "similarity", "file"], "/etc/passwd"), "outside the bundle"),
}


@pytest.fixture
def edited(made, tmp_path):
    def make(edit):
        copy = str(tmp_path / f"b{len(os.listdir(tmp_path))}")
        shutil.copytree(made[1], copy)
        path = os.path.join(copy, "manifest.json")
        manifest = json.load(open(path))
        result = edit(manifest)
        json.dump(manifest if result is None else result, open(path, "w"))
        return copy
    return make


@pytest.mark.parametrize("case", sorted(EDITS))
def test_edited_manifest_refused_by_runtime_and_lint(edited, case):
    edit, match = EDITS[case]
    copy = edited(edit)
    with pytest.raises(BundleError, match=match):
        load_bundle(copy)
    with pytest.raises(BundleError, match=match):
        lint_bundle(copy)
    r = CliRunner().invoke(export_cli, ["lint", "--bundle", copy])
    assert r.exit_code == 2 and r.output.startswith("error:") and match.split()[0].strip("'") in r.output


def test_manifest_cross_checked_against_the_graphs(edited):
    """Sizes that are valid on their own but not the graph's: refused at open, not an ORT error later."""
    copy = edited(_set(["model", "feature_size"], 13))
    load_bundle(copy)   # self-consistent as JSON...
    with pytest.raises(BundleError, match="features has size 12 .* says 13"):
        open_bundle(copy)
    copy2 = edited(_set(["graphs", "image_encoder", "inputs"],
                        lambda v: [dict(v[0], shape=["n", "R", 13])]))
    with pytest.raises(BundleError, match="axis 2 is 12 in the graph but 13"):
        open_bundle(copy2)


def test_unreadable_manifest_is_not_called_missing(made, tmp_path, monkeypatch):
    real_open = os.open       # the manifest is opened with os.open (kidrr.fileio.open_regular)

    def deny(path, *a, **k):
        if str(path).endswith("manifest.json"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)
    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(BundleError, match="cannot read .*Permission denied.*readable"):
        load_bundle(made[1])


def test_huge_manifest_not_read(made, tmp_path):
    copy = str(tmp_path / "b")
    shutil.copytree(made[1], copy)
    with open(os.path.join(copy, "manifest.json"), "ab") as fh:
        fh.truncate(17 << 20)   # sparse: no disk used
    with pytest.raises(BundleError, match="more than any manifest"):
        load_bundle(copy)


def test_export_and_lint_accept_dash_h():
    for args in (["-h"], ["lint", "-h"], ["onnx", "-h"]):
        r = CliRunner().invoke(export_cli, args)
        assert r.exit_code == 0 and "Usage:" in r.output, args
