"""Everything around TensorRT that runs without it: profiles, cache keys, precision rules, the
missing-tensorrt message. (No test here builds a real engine: TensorRT cannot be installed here.)"""
import os
import sys

import pytest
from click.testing import CliRunner

from kidrr.errors import BackendUnavailable, InputError
from kidrr.export import trt_engines as te
from kidrr.export.cli import main

ENTRY = {"sha256": "ab" * 32, "inputs": [
    {"name": "img_locals", "shape": ["n", "R", 32]}, {"name": "img_global", "shape": ["n", 32]},
    {"name": "cap_locals", "shape": ["m", "L", 32]}, {"name": "cap_global", "shape": ["m", 32]},
    {"name": "cap_lengths", "shape": ["m"]}]}


def test_parse_shapes_defaults_and_overrides():
    shapes = te.parse_shapes("n=1:32:64,m=2:8:16,L=1:16:40")
    assert shapes == {"n": (1, 32, 64), "m": (2, 8, 16), "R": (1, 36, 64), "L": (1, 16, 40)}
    assert te.parse_shapes(None)["m"] == (1, 8, 64)


@pytest.mark.parametrize("bad", ["n=1:32", "n=0:1:2", "n=4:2:8", "x=1:2:3", "n=a:b:c"])
def test_parse_shapes_rejects(bad):
    with pytest.raises(InputError):
        te.parse_shapes(bad)


def test_parse_shapes_caps_caption_length():
    with pytest.raises(InputError, match="max_caption_len"):
        te.parse_shapes("L=1:16:100", max_caption_len=64)


def test_input_profiles():
    prof = te.input_profiles(ENTRY, te.parse_shapes("n=1:32:64,m=1:8:64,R=36:36:49,L=1:16:64"))
    assert prof["img_locals"] == ((1, 36, 32), (32, 36, 32), (64, 49, 32))
    assert prof["cap_lengths"] == ((1,), (8,), (64,))


def test_engine_key_changes_with_every_part():
    prof = te.input_profiles(ENTRY, te.parse_shapes(None))
    base = te.engine_key("aa", "10.3.0", "8.6", "fp16", prof)
    assert base == te.engine_key("aa", "10.3.0", "8.6", "fp16", dict(reversed(list(prof.items()))))
    other = te.input_profiles(ENTRY, te.parse_shapes("n=1:16:64"))
    variants = [te.engine_key("bb", "10.3.0", "8.6", "fp16", prof), te.engine_key("aa", "11.0.0", "8.6", "fp16", prof),
                te.engine_key("aa", "10.3.0", "9.0", "fp16", prof), te.engine_key("aa", "10.3.0", "8.6", "fp32", prof),
                te.engine_key("aa", "10.3.0", "8.6", "fp16", other)]
    assert len({base, *variants}) == 6


def test_precision_rules_for_trt10_and_11():
    assert te.plan_precision("fp16", None, 11) == ("fp16", False)
    assert te.plan_precision("fp32", "fp16", 10) == ("fp16", True)   # weakly typed builder flag, TRT 10 only
    with pytest.raises(InputError, match="strongly typed"):
        te.plan_precision("fp32", "fp16", 11)
    with pytest.raises(InputError, match="QDQ"):
        te.plan_precision("int8", None, 10)


def test_missing_tensorrt_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)   # import tensorrt -> ImportError
    with pytest.raises(BackendUnavailable, match=r"pip install kidrr\[trt\]"):
        te.import_tensorrt()


def test_trt_cli_without_tensorrt(monkeypatch, tmp_path):
    from test_export import _model
    from kidrr.checkpoint import save_checkpoint
    from kidrr.export.bundle import export_bundle
    model, vocab = _model()
    save_checkpoint(str(tmp_path / "ck"), model, vocab)
    export_bundle(str(tmp_path / "ck"), str(tmp_path / "b"), verify=False, progress=False, log=lambda m: None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(main, ["trt", "--bundle", str(tmp_path / "b")])
    assert result.exit_code == 2 and "pip install kidrr[trt]" in result.output


def test_engine_set_is_what_the_trt_runtime_loads(monkeypatch, tmp_path):
    """With the TensorRT calls stubbed (no TensorRT here), the builder writes one engine set that
    the runtime's trt backend finds, and a second build is served from the cache."""
    import types
    from test_export import _model
    from kidrr.checkpoint import save_checkpoint
    from kidrr.export.bundle import export_bundle
    from kidrr.runtime.bundle import load_bundle
    from kidrr.runtime.trt_runner import engine_folder
    model, vocab = _model()
    save_checkpoint(str(tmp_path / "ck"), model, vocab)
    export_bundle(str(tmp_path / "ck"), str(tmp_path / "b"), verify=False, progress=False, log=lambda m: None)
    logger = lambda level: None  # noqa: E731
    logger.WARNING = 0
    fake = types.SimpleNamespace(__version__="10.9.0", Logger=logger)
    built = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake)   # what `import tensorrt as trt` then finds
    monkeypatch.setattr(te.optional, "tensorrt_missing", lambda: None)
    monkeypatch.setattr(te, "compute_capability", lambda: "9.0")
    monkeypatch.setattr(te, "_build_one", lambda major, logger, path, *a: built.append(path) or b"plan")
    plans = te.build_engines(str(tmp_path / "b"), log=lambda m: None)
    assert sorted(plans) == ["image_encoder", "similarity", "text_encoder"] and len(built) == 3
    folder = engine_folder(load_bundle(str(tmp_path / "b")))
    assert {os.path.dirname(p) for p in plans.values()} == {folder}
    te.build_engines(str(tmp_path / "b"), log=lambda m: None)
    assert len(built) == 3  # cached
