"""kidrr export: bundle contents, custom ops, parity with PyTorch at several shapes, bad input."""
import json
import os

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from kidrr.checkpoint import save_checkpoint
from kidrr.config import ModelConfig
from kidrr.errors import BundleError, CheckpointError, InputError
from kidrr.export import graphs
from kidrr.export.bundle import export_bundle
from kidrr.export.cli import main
from kidrr.export.lint import lint_bundle
from kidrr.export.manifest import check_bundle
from kidrr.export.ort_session import session
from kidrr.model import KIDRR
from kidrr.tokenizer import Vocabulary

CAPTIONS = ["a red dog left of a blue cat", "there is a big green car above a small bus",
            "a photo of a man to the right of a tree ."] * 4


def _model(**kw):
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    kw = dict(dict(feature_size=24, embed_size=32, sim_size=16, word_dim=20, knowledge_nodes=4), **kw)
    cfg = ModelConfig.small(vocab_size=len(vocab), **kw)
    torch.manual_seed(0)
    model = KIDRR(cfg).eval()
    with torch.no_grad():  # move off the init (zero biases, LN gain 1/16) so every path matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model, vocab


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, vocab = _model()
    folder = str(tmp_path_factory.mktemp("ck") / "ck")
    save_checkpoint(folder, model, vocab)
    return folder, model


@pytest.fixture(scope="module")
def bundle(checkpoint, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("b") / "bundle")
    manifest = export_bundle(checkpoint[0], out, progress=False, log=lambda m: None)
    return out, manifest


def test_bundle_layout_and_manifest(bundle, checkpoint):
    out, manifest = bundle
    assert sorted(os.listdir(out)) == ["export_report.json", "image_encoder.onnx", "manifest.json", "similarity.onnx",
                                       "text_encoder.onnx", "vocab.json"]
    on_disk = json.load(open(os.path.join(out, "manifest.json")))
    assert on_disk["format"] == "kidrr-bundle/1" and on_disk["precision"] == "fp32"
    # A BiGRU model without fusion writes the manifest it always wrote: the later fields are absent.
    assert on_disk["model"] == {k: v for k, v in checkpoint[1].cfg.to_dict().items()
                                if k not in ("text_encoder", "score_fusion")}
    sim = on_disk["graphs"]["similarity"]
    assert [i["name"] for i in sim["inputs"]] == ["img_locals", "img_global", "cap_locals", "cap_global", "cap_lengths"]
    assert sim["inputs"][4]["dtype"] == "int64" and sim["outputs"][0]["shape"] == ["n", "m"]
    assert on_disk["graphs"]["text_encoder"]["inputs"][0] == {"name": "ids", "dtype": "int64", "shape": ["m", "L"],
                                                             "dynamic_axes": {"0": "m", "1": "L"}}
    assert check_bundle(out)["source_checkpoint_sha256"] == on_disk["source_checkpoint_sha256"]
    # verification numbers are recorded and within the fp32 tolerance
    report = json.load(open(os.path.join(out, "export_report.json")))   # beside the manifest: not its identity
    assert all(v <= 1e-5 for v in report["verification"]["max_abs_diff"].values())


def test_custom_ops_are_kidrr_functions(bundle):
    out, _ = bundle
    expected = {"image_encoder": {"DisseminationStep"}, "text_encoder": {"DisseminationStep"},
                "similarity": {"CrossAttention", "SimilarityVector", "RelationStep"}}
    for graph, ops in expected.items():
        model = onnx.load(os.path.join(out, f"{graph}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        used = {n.op_type for n in model.graph.node if n.domain == "kidrr"}
        functions = {f.name for f in model.functions if f.domain == "kidrr"}
        assert used == ops and functions == ops
        # function bodies are standard ONNX only
        assert all(n.domain in ("", "ai.onnx") for f in model.functions for n in f.node)
        # nothing frozen: no concrete batch/length dims in value_info or io
        for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
            dims = v.type.tensor_type.shape.dim
            if dims:
                assert not dims[0].HasField("dim_value"), v.name


@pytest.mark.parametrize("n,m,regions,length", [(1, 1, 36, 1), (7, 7, 49, 3), (64, 7, 36, 41), (7, 64, 49, 3)])
def test_parity_at_many_shapes(bundle, checkpoint, n, m, regions, length):
    out, _ = bundle
    model = checkpoint[1]
    sess = {g: session(os.path.join(out, f"{g}.onnx")) for g in ("image_encoder", "text_encoder", "similarity")}
    rng = np.random.default_rng(n * 100 + m)
    feats = rng.normal(size=(n, regions, model.cfg.feature_size)).astype(np.float32)
    lengths = rng.integers(1, length + 1, size=m).astype(np.int64)
    lengths[0] = length
    ids = np.zeros((m, length), np.int64)
    for r, k in enumerate(lengths):
        ids[r, :k] = rng.integers(1, model.cfg.vocab_size, size=k)
    with torch.no_grad():
        il, ig = model.encode_images(torch.from_numpy(feats))
        cl, cg = model.encode_texts(torch.from_numpy(ids), torch.from_numpy(lengths))
        ref = model.score(il, ig, cl, cg, torch.from_numpy(lengths)).numpy()
    o_il, o_ig = sess["image_encoder"].run(None, {"features": feats})
    o_cl, o_cg = sess["text_encoder"].run(None, {"ids": ids, "lengths": lengths})
    for got, want in ((o_il, il), (o_ig, ig), (o_cl, cl), (o_cg, cg)):
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)
    assert (o_cl[np.arange(length)[None, :] >= lengths[:, None]] == 0).all()  # padding rows exactly zero
    scores = sess["similarity"].run(None, {"img_locals": o_il, "img_global": o_ig, "cap_locals": o_cl,
                                           "cap_global": o_cg, "cap_lengths": lengths})[0]
    assert scores.shape == (n, m)
    np.testing.assert_allclose(scores, ref, atol=1e-5, rtol=0)


def test_similarity_variants_equal_the_model(checkpoint):
    """The folded relation steps and GEMM attention equal the literal (unfolded, batched) form."""
    model = checkpoint[1]
    feed = _encoded(model, n=5, m=6)
    ref = feed.pop("_ref")
    for opt in (graphs.SimilarityOptions(fold_qk=False, attention_layout="batched"),
                graphs.SimilarityOptions(fold_qk=True, attention_layout="batched"),
                graphs.SimilarityOptions(fold_qk=False, attention_layout="gemm")):
        got = session(graphs.similarity(model, 18, opt)).run(None, feed)[0]
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def _encoded(model, n, m, length=9):
    rng = np.random.default_rng(1)
    feats = torch.from_numpy(rng.normal(size=(n, 11, model.cfg.feature_size)).astype(np.float32))
    lengths = torch.from_numpy(rng.integers(1, length + 1, size=m))
    ids = torch.randint(1, model.cfg.vocab_size, (m, length)) * (torch.arange(length)[None] < lengths[:, None])
    with torch.no_grad():
        il, ig = model.encode_images(feats)
        cl, cg = model.encode_texts(ids, lengths)
        ref = model.score(il, ig, cl, cg, lengths).numpy()
    return {"img_locals": il.numpy(), "img_global": ig.numpy(), "cap_locals": cl.numpy(), "cap_global": cg.numpy(),
            "cap_lengths": lengths.numpy(), "_ref": ref}


def test_non_adaptive_and_identity_config_exports(tmp_path):
    model, _ = _model(rgr_adaptive=False, score_activation="identity", knowledge_nodes=0)
    for make in (graphs.image_encoder, graphs.text_encoder):
        onnx.checker.check_model(make(model, 18), full_check=True)
    feed = _encoded(model, 3, 4)
    ref = feed.pop("_ref")
    got = session(graphs.similarity(model, 18)).run(None, feed)[0]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_lint_passes_on_fp32_bundle(bundle):
    assert lint_bundle(bundle[0]) == {"image_encoder": [], "text_encoder": [], "similarity": []}


def test_refuses_existing_bundle_without_force(bundle, checkpoint):
    with pytest.raises(BundleError, match="--force"):
        export_bundle(checkpoint[0], bundle[0], progress=False, log=lambda m: None)


def test_force_replaces_and_opset_range(checkpoint, tmp_path):
    out = str(tmp_path / "b")
    export_bundle(checkpoint[0], out, progress=False, log=lambda m: None, verify=False)
    m = export_bundle(checkpoint[0], out, opset=20, force=True, progress=False, log=lambda m: None, verify=False)
    assert {g["opset"] for g in m["graphs"].values()} == {20}
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]  # no staging left behind
    for bad in (17, 21):
        with pytest.raises(InputError, match="opset"):
            export_bundle(checkpoint[0], str(tmp_path / "c"), opset=bad, progress=False)


def test_unwritable_out_folder(checkpoint, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(BundleError, match="choose another --out"):
        export_bundle(checkpoint[0], str(blocker / "b"), progress=False)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that ignores permissions")
        with pytest.raises(BundleError, match="not writable"):
            export_bundle(checkpoint[0], str(locked / "b"), progress=False)
    finally:
        locked.chmod(0o700)


def test_checkpoint_config_weights_disagree(checkpoint, tmp_path):
    folder = str(tmp_path / "ck")
    model, vocab = _model()
    save_checkpoint(folder, model, vocab)
    cfg = json.load(open(os.path.join(folder, "config.json")))
    cfg["model"]["embed_size"] = 48
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(CheckpointError, match="disagree"):
        export_bundle(folder, str(tmp_path / "b"), progress=False)
    assert not (tmp_path / "b").exists()


def test_edited_bundle_is_refused(bundle, tmp_path):
    import shutil
    copy = str(tmp_path / "edited")
    shutil.copytree(bundle[0], copy)
    with open(os.path.join(copy, "similarity.onnx"), "ab") as fh:
        fh.write(b"\0")
    # lint reads the bundle with the runtime's own loader, so both refuse it with the same words
    with pytest.raises(BundleError, match="similarity.onnx does not match its sha256"):
        lint_bundle(copy)
    result = CliRunner().invoke(main, ["lint", "--bundle", copy])
    assert result.exit_code == 2 and "corrupted after export" in result.output


def test_cli_onnx_and_lint(checkpoint, tmp_path):
    out = str(tmp_path / "cli")
    result = CliRunner().invoke(main, ["onnx", "--checkpoint", checkpoint[0], "--out", out])
    assert result.exit_code == 0, result.output
    assert "end_to_end.scores" in result.output and "rank agreement" in result.output
    again = CliRunner().invoke(main, ["onnx", "--checkpoint", checkpoint[0], "--out", out])
    assert again.exit_code == 2 and "--force" in again.output
    lint = CliRunner().invoke(main, ["lint", "--bundle", out])
    assert lint.exit_code == 0 and "similarity: ok" in lint.output
