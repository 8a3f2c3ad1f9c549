"""On the C side: gallery and feature files treated as hostile, and finite input that
overflows inside the encoder. Each test feeds the C ABI (through the kidrr_search example and
kidrr_tool) a file the Python side wrote and then damaged, and checks for a clean refusal with a
message; before the fixes each of these loaded (KIDRR_OK) and crashed or returned wrong scores.
"""
import io
import os
import zipfile

import numpy as np
import pytest

import test_cpp_support as cpp
from test_cpp_runtime import FEATURES, bundle, features, retriever, tool  # noqa: F401 (fixtures)

HUGE = 2 ** 62 + 1  # (HUGE * 1 * D) wraps around size_t to a small byte count


@pytest.fixture(scope="module")
def built():
    return cpp.build("release")


def _npy_with_shape(shape: tuple, data: bytes) -> bytes:
    """A float32 .npy whose header declares `shape` whatever `data` holds (as numpy pads headers)."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': %r, }" % (shape,)
    header = header.ljust(((len(header) + 11) // 64 + 1) * 64 - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data


def _npz(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # zipfile writes correct CRCs
        for name, data in members.items():
            zf.writestr(name + ".npy", data)
    return buf.getvalue()


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _search(built, bundle_dir, gallery, caption="a dog runs on the grass"):
    return cpp.run([os.path.join(built, "kidrr_search"), bundle_dir, str(gallery), caption])


def _saved_gallery(retriever, tmp_path, n=6):  # noqa: F811
    g = retriever.encode_images(features(n, 4, seed=11))
    path = tmp_path / "gallery.npz"
    g.save(str(path))
    return g, path


def test_gallery_whose_header_overflows_size_is_refused(built, bundle, retriever, tmp_path):  # noqa: F811
    """Locals declared (2^62 + 1, 1, D) with D floats of data: the element count times 4
    wraps to the real size, so the old reader accepted it and kidrr_score ran out of bounds."""
    g, _ = _saved_gallery(retriever, tmp_path)
    d = g.globals.shape[1]
    assert (HUGE * 1 * d) % 2 ** 64 == d  # the wrap-around the file relies on (d floats of data)
    crafted = tmp_path / "crafted.npz"
    crafted.write_bytes(_npz({"format": _npy(np.array("kidrr-gallery/1")), "bundle_id": _npy(np.array(g.bundle_id)),
                              "locals": _npy_with_shape((HUGE, 1, d), b"\0" * (4 * d)),
                              "globals": _npy(g.globals[:1].copy())}))
    proc = _search(built, bundle[0], crafted)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "size overflows" in proc.stderr or "promises" in proc.stderr, proc.stderr


def test_features_npy_whose_header_overflows_size_is_refused(built, bundle, tmp_path):  # noqa: F811
    path = tmp_path / "feats.npy"
    assert (HUGE * FEATURES) % 2 ** 64 == FEATURES
    path.write_bytes(_npy_with_shape((HUGE, 1, FEATURES), b"\0" * (4 * FEATURES)))
    proc = _search(built, bundle[0], path)
    assert proc.returncode == 1 and ("size overflows" in proc.stderr or "promises" in proc.stderr), proc.stderr


@pytest.mark.parametrize("cut", [1, 100])
def test_truncated_features_npy_is_refused(built, bundle, tmp_path, cut):  # noqa: F811
    data = _npy(features(3, 2, seed=1))
    path = tmp_path / "feats.npy"
    path.write_bytes(data[:-cut])
    proc = _search(built, bundle[0], path)
    assert proc.returncode == 1 and "promises" in proc.stderr, proc.stderr


def test_gallery_with_one_flipped_byte_is_refused_like_python(built, bundle, retriever, tmp_path):  # noqa: F811
    """One flipped byte in the locals changed scores silently; the zip CRC-32 catches it,
    as Python's zipfile does (the reference: np.load must fail on the same file)."""
    g, path = _saved_gallery(retriever, tmp_path)
    data = bytearray(path.read_bytes())
    at = bytes(data).index(g.locals.tobytes()[:64]) + 40  # inside the locals' float data
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="CRC|Bad"):
        with np.load(path) as z:
            z["locals"]
    proc = _search(built, bundle[0], path)
    assert proc.returncode == 1 and "CRC-32" in proc.stderr, proc.stderr


@pytest.mark.parametrize("array,value", [("locals", np.nan), ("globals", np.inf), ("locals", -np.inf)])
def test_gallery_with_non_finite_row_is_refused(built, bundle, retriever, tmp_path, array, value):  # noqa: F811
    """A NaN image was ranked second; now the file is refused naming the image."""
    g, _ = _saved_gallery(retriever, tmp_path)
    arrays = {"locals": np.array(g.locals), "globals": np.array(g.globals)}
    arrays[array][2].flat[1] = value
    path = tmp_path / "nan.npz"
    np.savez(path, format=np.array("kidrr-gallery/1"), bundle_id=np.array(g.bundle_id), **arrays)
    proc = _search(built, bundle[0], path)
    assert proc.returncode == 1 and "image 2 has a NaN or infinite" in proc.stderr, proc.stderr


def test_gallery_with_wrong_dtype_or_shape_is_refused(built, bundle, retriever, tmp_path):  # noqa: F811
    g, _ = _saved_gallery(retriever, tmp_path)
    for name, arrays in {"f8": dict(locals=np.asarray(g.locals, np.float64), globals=g.globals),
                         "rows": dict(locals=g.locals[:-1], globals=g.globals),
                         "dim": dict(locals=g.locals[..., :-1], globals=g.globals[:, :-1])}.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, format=np.array("kidrr-gallery/1"), bundle_id=np.array(g.bundle_id), **arrays)
        proc = _search(built, bundle[0], path)
        assert proc.returncode == 1 and "float32" in proc.stderr and "(n, R, D)" in proc.stderr or \
            name == "f8" and "dtype <f8 is not supported" in proc.stderr, (name, proc.stderr)


def test_huge_finite_features_give_an_error_not_nan_scores(built, bundle, tmp_path):  # noqa: F811
    """Features of 3e38 overflow inside the image encoder; NaN scores used to
    come back from search. The reference that this input really overflows in the graph: ONNX
    Runtime itself, run on the bundle's image encoder directly."""
    import onnxruntime as ort
    feats = np.full((4, 3, FEATURES), 3e38, dtype=np.float32)
    session = ort.InferenceSession(os.path.join(bundle[0], "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: feats})
    assert not all(np.isfinite(o).all() for o in outputs)
    path = tmp_path / "huge.npy"
    np.save(path, feats)
    proc = _search(built, bundle[0], path)
    assert proc.returncode == 1 and "NaN or infinite values from finite input" in proc.stderr, proc.stderr
