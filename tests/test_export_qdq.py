"""Static int8 (QDQ) similarity graphs: calibration data checks, the recall gate, TensorRT's Q/DQ rules."""
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kidrr.checkpoint import shipped_checkpoint
from kidrr.export import quantize as qz
from kidrr.export import verify
from kidrr.export.bundle import export_bundle
from kidrr.export.qdq_rules import check_qdq, quantized_products
from kidrr.export.trt_engines import plan_precision

QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def qdq_bundle(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("qdq") / "b")
    return out, export_bundle(shipped_checkpoint(), out, precision="int8", recall_images=20, **QUIET)


def test_static_int8_bundle_is_qdq_around_the_relation_products(qdq_bundle):
    out, manifest = qdq_bundle
    sim = manifest["graphs"]["similarity"]
    assert sim["precision"] == "int8" and sim["quantization"] == "static-qdq" and sim["kidrr_functions"] == []
    model = onnx.load(os.path.join(out, "similarity.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not ops & {"DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul"}
    assert quantized_products(model) == 2 * 3          # q/k and update of each of the 3 relation steps
    weights = [t for t in model.graph.initializer if t.data_type == TensorProto.INT8 and t.dims and len(t.dims) == 2]
    assert len(weights) == 6
    assert check_qdq(model, "similarity") == []
    assert abs(manifest["verification"]["recall_delta"]["delta"]["rsum"]) <= verify.RECALL_TARGETS["int8"]
    assert plan_precision("int8", None, 10, "static-qdq") == ("int8", False)   # TensorRT takes it as typed


def test_static_int8_runs_in_the_runtime_close_to_fp32(qdq_bundle):
    from kidrr.runtime import open_bundle
    from kidrr.synthetic import make_synthetic
    split = make_synthetic("dev").subset(6)
    q = open_bundle(qdq_bundle[0], backend="ort", threads=1)
    scores = q.score(q.encode_images(split.images), split.captions)
    assert scores.shape == (6, 30) and np.isfinite(scores).all()


@pytest.mark.skipif(shutil.which("polygraphy", path=os.path.dirname(sys.executable)) is None,
                    reason="polygraphy is a test extra (pip install kidrr[test])")
def test_polygraphy_lint_passes(qdq_bundle, tmp_path):
    tool = os.path.join(os.path.dirname(sys.executable), "polygraphy")
    report = str(tmp_path / "lint.json")
    proc = subprocess.run([tool, "check", "lint", os.path.join(qdq_bundle[0], "similarity.onnx"), "-o", report],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    import json
    with open(report) as fh:
        summary = json.load(fh)["summary"]
    assert summary["failing"] == [] and summary["passing"]


def test_recall_gate_refuses_then_accepts(tmp_path, monkeypatch):
    monkeypatch.setitem(verify.RECALL_TARGETS, "int8", -1.0)   # any delta is "too large"
    out = str(tmp_path / "b")
    with pytest.raises(verify.VerificationError, match="accept-recall-loss"):
        export_bundle(shipped_checkpoint(), out, precision="int8", recall_images=10, **QUIET)
    assert not os.path.exists(out)
    manifest = export_bundle(shipped_checkpoint(), out, precision="int8", recall_images=10, accept_recall_loss=True,
                             **QUIET)
    assert manifest["verification"]["recall_delta"]["accepted_loss"] is True


def _model(feature_size):
    return types.SimpleNamespace(cfg=types.SimpleNamespace(feature_size=feature_size))


def _write_dev(folder, n, features, regions=4):
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "dev_ims.npy"), np.ones((n, regions, features), np.float32))
    with open(os.path.join(folder, "dev_caps.txt"), "w") as fh:
        fh.write("a dog\n" * (5 * n))
    return str(folder)


def test_calibration_data_checks(tmp_path):
    with pytest.raises(qz.CalibrationError, match="--calibration DATA"):
        qz.calibration_split(_model(24), None)          # the synthetic set cannot calibrate a 24-d model
    with pytest.raises(qz.CalibrationError, match="24-d region features but the model reads 128"):
        qz.calibration_split(_model(128), _write_dev(tmp_path / "wrong", 30, 24))
    with pytest.raises(qz.CalibrationError, match="needs at least 20"):
        qz.calibration_split(_model(24), _write_dev(tmp_path / "small", 19, 24))
    with pytest.raises(qz.CalibrationError, match="not a folder"):
        qz.calibration_split(_model(24), str(tmp_path / "nothing"))
    with pytest.raises(qz.CalibrationError, match="dev_ims.npy is missing"):
        qz.calibration_split(_model(24), str(tmp_path))
    split, what = qz.calibration_split(_model(24), _write_dev(tmp_path / "ok", 30, 24))
    calibrate, held = qz.split_parts(split, None)
    assert (len(calibrate.images), len(held.images)) == (15, 15) and "ok dev" in what
    assert len(qz.split_parts(split, 12)[1].images) == 12


def test_calibration_only_for_static_int8(tmp_path):
    from kidrr.errors import InputError
    with pytest.raises(InputError, match="--calibration is for --precision int8"):
        export_bundle(shipped_checkpoint(), str(tmp_path / "b"), precision="fp16", calibration="synthetic", **QUIET)


def _qdq_matmul(zero=0, scale=0.1, pair_both=True, per_channel_activation=False):
    """x (2, 3) -> Q/DQ -> MatMul with an int8 per-channel weight (3, 4)."""
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(zero, np.int8), "xz"),
             numpy_helper.from_array(np.ones((3, 4), np.int8), "w"),
             numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(4, np.int8), "wz")]
    if per_channel_activation:
        inits[0] = numpy_helper.from_array(np.full(3, scale, np.float32), "xs")
        inits[1] = numpy_helper.from_array(np.zeros(3, np.int8), "xz")
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=1),
             helper.make_node("MatMul", ["xd" if pair_both else "x", "wd"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_qdq_rules():
    assert check_qdq(_qdq_matmul(), "g") == [] and quantized_products(_qdq_matmul()) == 1
    assert any("zero point must be int8 0" in p for p in check_qdq(_qdq_matmul(zero=3), "g"))
    assert any("finite positive" in p for p in check_qdq(_qdq_matmul(scale=-1.0), "g"))
    assert any("one input only" in p for p in check_qdq(_qdq_matmul(pair_both=False), "g"))
    assert any("per tensor" in p for p in check_qdq(_qdq_matmul(per_channel_activation=True), "g"))
