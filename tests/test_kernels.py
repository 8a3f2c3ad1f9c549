"""The fused kernels (libkidrr_ops, runtime/cpp/src/ops) against the ops' function bodies.

One shared C++ build (test_cpp_support). Each op alone, as a one-node graph carrying its function
body, run by ONNX Runtime with and without the library: equal within 1e-5 at several shapes,
lengths of 1 and padded captions included; then whole bundles through the Python runtime and the
C ABI; then the fallbacks (a library that does not load, kernels='bodies', KIDRR_OPS_LIBRARY=off).
"""
import os
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

import test_cpp_support as cpp

TOL = 1e-5


@pytest.fixture(scope="module")
def ops_library():
    path = os.path.join(cpp.build("release"), "libkidrr_ops.so")
    assert os.path.isfile(path), "the release build made no libkidrr_ops.so"
    return path


def _session(model, library=None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 2
    if library:
        opts.register_custom_ops_library(library)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _one_node(function, inputs, n_outputs=1, **attrs):
    from kidrr.export.graphs import IR_VERSION
    names = [f"in{i}" for i in range(len(inputs))]
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(function.name, names, outs, domain="kidrr", **attrs)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names],
                              [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("kidrr", 1)],
                              functions=[function], ir_version=IR_VERSION)
    return model, dict(zip(names, inputs))


def _compare(model, feeds, library):
    want = _session(model).run(None, feeds)
    got = _session(model, library).run(None, feeds)
    worst = 0.0
    for w, g in zip(want, got):
        assert w.shape == g.shape
        assert np.isfinite(g).all()
        worst = max(worst, float(np.abs(w - g).max()) if w.size else 0.0)
    assert worst <= TOL, worst
    return worst


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _word_mask(rng, m, L):
    lengths = rng.integers(1, L + 1, m)
    lengths[0] = L
    return (np.arange(L)[None, :] < lengths[:, None]).astype(np.float32)


# (n images, m captions, R regions, L words): ones, a lone word, padding, sizes past a 128-row block
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 1), (3, 4, 7, 6), (9, 5, 16, 13), (4, 17, 36, 20)]


@pytest.mark.parametrize("n,m,R,L", SHAPES)
def test_cross_attention_equals_its_function_body(ops_library, n, m, R, L):
    from kidrr.export import kidrr_functions as fn
    rng = np.random.default_rng(n * 100 + L)
    D = 24
    img, cap = _rand(rng, n, R, D), _rand(rng, m, L, D)
    wmask = _word_mask(rng, m, L)
    cap *= wmask[:, :, None]
    body = fn.cross_attention(18, onnx.TensorProto.FLOAT)
    cases = [((cap, img, np.ones((n, R), np.float32)), [3]),               # words over regions (ll)
             ((_rand(rng, m, 1, D), img, np.ones((n, R), np.float32)), [1]),  # caption global over regions
             ((_rand(rng, n, 1, D), cap, wmask), [1])]                      # image global over padded words
    for inputs, axes in cases:
        model, feeds = _one_node(body, inputs, smooth_lambda=9.0, leaky_slope=0.1, norm_axes=axes)
        _compare(model, feeds, ops_library)
    # the kernel really ran (not the inlined body): its own shape check answers a bad mask
    feeds["in2"] = np.ones((n, R + 1), np.float32)
    with pytest.raises(Exception, match="kidrr.CrossAttention: context_mask"):
        _session(model, ops_library).run(None, feeds)


@pytest.mark.parametrize("n,m,R,L", SHAPES)
def test_similarity_vector_equals_its_function_body(ops_library, n, m, R, L):
    from kidrr.export import kidrr_functions as fn
    rng = np.random.default_rng(7 + L)
    D, S = 24, 10
    w, b = _rand(rng, D, S), _rand(rng, S)
    body = fn.similarity_vector(18, onnx.TensorProto.FLOAT)
    for x, y in [(_rand(rng, n, 1, D), _rand(rng, 1, m, D)),          # globals against globals
                 (_rand(rng, n, m, L, D), _rand(rng, m, L, D)),         # attended words against words
                 (_rand(rng, n, m, D), _rand(rng, n, 1, D))]:           # attended global against a global
        model, feeds = _one_node(body, [x, y, w, b])
        _compare(model, feeds, ops_library)


@pytest.mark.parametrize("n,m,R,L", SHAPES)
def test_relation_step_equals_its_function_body(ops_library, n, m, R, L):
    from kidrr.export import kidrr_functions as fn
    rng = np.random.default_rng(11 + L)
    S, N = 12, 3 + L
    node_mask = np.concatenate([np.ones((m, 3), np.float32), _word_mask(rng, m, L)], axis=1)
    s = _rand(rng, n, m, N, S) * node_mask[None, :, :, None]
    weights = [_rand(rng, S, S) * 0.3, _rand(rng, S), _rand(rng, S, S) * 0.3, _rand(rng, S)]
    body = fn.relation_step(18, onnx.TensorProto.FLOAT)
    prev_full = np.abs(_rand(rng, n, m, N, N))
    for rows, row_mask, prev, gamma in [(s, node_mask, np.float32(0.0), 0.0),            # first step
                                        (s, node_mask, prev_full, 0.4),                    # a middle step
                                        (s[:, :, :1], node_mask[:, :1], prev_full[:, :, :1], 0.7)]:  # the last
        model, feeds = _one_node(body, [rows, s, node_mask, row_mask, np.asarray(prev, np.float32), *weights],
                                 n_outputs=2, gamma=gamma)
        _compare(model, feeds, ops_library)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    """A random model at a small config (D=64, S=16, 3 relation steps) exported fp32."""
    import torch
    from kidrr.checkpoint import save_checkpoint
    from kidrr.config import ModelConfig
    from kidrr.export.bundle import export_bundle
    from kidrr.model import KIDRR
    from kidrr.tokenizer import Vocabulary
    root = tmp_path_factory.mktemp("kernels")
    torch.manual_seed(3)
    vocab = Vocabulary.build(["a dog runs on the grass", "a red car", "two cats sleep on a mat"] * 4)
    model = KIDRR(ModelConfig.small(vocab_size=len(vocab), feature_size=20, embed_size=64, sim_size=16,
                                    knowledge_nodes=4, max_caption_len=12)).eval()
    save_checkpoint(str(root / "ckpt"), model, vocab)
    export_bundle(str(root / "ckpt"), str(root / "bundle"), force=True, verify=False, progress=False, log=lambda m: None)
    return str(root / "bundle")


CAPTIONS = ["a dog", "two cats sleep on a mat", "a red car runs on the grass", "dog", "a cat on the grass"]


def test_bundle_scores_equal_with_fused_kernels_and_bodies(ops_library, small_bundle):
    from kidrr.runtime import open_bundle
    feats = np.random.default_rng(0).standard_normal((13, 6, 20)).astype(np.float32)
    with open_bundle(small_bundle, threads=2, kernels=ops_library) as fused, \
            open_bundle(small_bundle, threads=2, kernels="bodies") as bodies:
        assert fused.runner.kernels.startswith("fused") and "kidrr_ops" in fused.runner.describe()
        assert bodies.runner.kernels.startswith("function bodies")
        gallery = bodies.encode_images(feats)
        want, got = bodies.score(gallery, CAPTIONS), fused.score(gallery, CAPTIONS)
    print(f"\nfused vs function bodies, whole similarity graph: max |diff| {np.abs(got - want).max():.2e}")
    assert np.abs(got - want).max() <= TOL


def test_a_library_that_does_not_load_falls_back_once_with_a_warning(small_bundle, tmp_path, monkeypatch):
    from kidrr.errors import BackendUnavailable
    from kidrr.runtime import kernels, open_bundle
    broken = tmp_path / "libkidrr_ops.so"
    broken.write_bytes(b"not a shared library")
    monkeypatch.setenv("KIDRR_OPS_LIBRARY", str(broken))
    kernels._warned.discard(str(broken))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_bundle(small_bundle, threads=1) as rt, open_bundle(small_bundle, threads=1):
            assert rt.runner.kernels.startswith("function bodies")
            assert rt.score(rt.encode_images(np.ones((2, 6, 20), np.float32)), ["a dog"]).shape == (2, 1)
    said = [w for w in caught if issubclass(w.category, kernels.KernelsUnavailableWarning)]
    assert len(said) == 1 and str(broken) in str(said[0].message)
    with pytest.raises(BackendUnavailable, match="cannot be used here"):   # asked for by name: an error
        open_bundle(small_bundle, threads=1, kernels=str(broken))
    monkeypatch.setenv("KIDRR_OPS_LIBRARY", "off")
    with open_bundle(small_bundle, threads=1) as rt:
        assert "KIDRR_OPS_LIBRARY=off" in rt.runner.kernels


def test_c_abi_registers_the_library_beside_it_and_scores_the_same(ops_library, small_bundle, tmp_path):
    build = os.path.dirname(ops_library)
    tool = os.path.join(build, "kidrr_tool")
    feats = np.random.default_rng(1).standard_normal((7, 6, 20)).astype(np.float32)
    np.save(tmp_path / "feats.npy", feats)
    (tmp_path / "q.hex").write_text(cpp.hex_lines(CAPTIONS))
    off = dict(os.environ, KIDRR_OPS_LIBRARY="off")
    on = {k: v for k, v in os.environ.items() if k != "KIDRR_OPS_LIBRARY"}
    assert cpp.run([tool, "kernels", small_bundle], env=on).stdout.strip() == f"fused ({ops_library})"
    assert cpp.run([tool, "kernels", small_bundle], env=off).stdout.strip() == "function bodies"
    scores = {}
    for name, env in (("fused", on), ("bodies", off)):
        proc = cpp.run([tool, "score", small_bundle, str(tmp_path / "feats.npy"), str(tmp_path / "q.hex")], env=env)
        assert proc.returncode == 0, proc.stderr
        scores[name] = np.array([[float(x) for x in row.split()] for row in proc.stdout.splitlines()], np.float32)
    assert scores["fused"].shape == (7, len(CAPTIONS))
    assert np.abs(scores["fused"] - scores["bodies"]).max() <= TOL
    broken = tmp_path / "libkidrr_ops.so"
    broken.write_bytes(b"not a shared library")
    proc = cpp.run([tool, "kernels", small_bundle], env=dict(on, KIDRR_OPS_LIBRARY=str(broken)))
    assert proc.returncode == 0 and proc.stdout.startswith("function bodies") and "not used" in proc.stderr
