"""Memory safety of the C++ runtime: its tests under ASan + UBSan (+ LeakSanitizer), and the
kidrr_search example without leaks under LeakSanitizer and under valgrind.

Uses build/cpp/asan (Debug, -fsanitize=address,undefined; cached like the release build).
"""
import os
import shutil

import numpy as np
import pytest

import test_cpp_support as cpp
from test_cpp_minilm_bundle import QUERIES as MINILM_QUERIES, contract_bundle  # noqa: F401 (fixture)
from test_cpp_runtime import FEATURES, bundle, features, retriever  # noqa: F401 (fixtures)
from test_cpp_wordpiece import EDGY, HAND_PICKED

SANITIZER_ENV = {"ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1", "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


@pytest.fixture(scope="module")
def asan_build():
    return cpp.build("asan")


@pytest.fixture(scope="module")
def gallery(bundle, retriever, tmp_path_factory):  # noqa: F811
    path = str(tmp_path_factory.mktemp("cppmem") / "gallery.npz")
    retriever.encode_images(features(12, 4, seed=9)).save(path)
    return path


def _env():
    return dict(os.environ, **SANITIZER_ENV)


def test_cpp_tests_pass_under_asan_ubsan(asan_build, bundle, tmp_path):  # noqa: F811
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle[0], tampered)
    with open(tampered / "vocab.json", "ab") as fh:
        fh.write(b" ")
    proc = cpp.run([os.path.join(asan_build, "kidrr_tests"), bundle[0], str(tampered), str(FEATURES)], env=_env())
    assert proc.returncode == 0 and " 0 failed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr[-5000:]


def test_minilm_bundle_and_wordpiece_under_asan_ubsan(asan_build, contract_bundle, tmp_path):  # noqa: F811
    """The WordPiece tokenizer on MiniLM's tokenizer.json (hard cases, invalid UTF-8), a MiniLM
    bundle opened and scored, and one refused for an unknown tokenizer kind: no sanitizer report."""
    import json
    folder, manifest = contract_bundle
    tool = os.path.join(asan_build, "kidrr_tool")
    texts = [t.replace("\0", "") for t in HAND_PICKED + EDGY]
    (tmp_path / "c.hex").write_text(cpp.hex_lines(texts) + "ff\n" + "e29f\n")
    np.save(tmp_path / "feats.npy", features(5, 4, seed=2))
    (tmp_path / "q.hex").write_text(cpp.hex_lines(MINILM_QUERIES))
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "manifest.json").write_text(json.dumps(dict(manifest, tokenizer=dict(manifest["tokenizer"], kind="bpe"))))
    runs = [([tool, "ids", os.path.join(folder, "tokenizer.json"), "16", str(tmp_path / "c.hex")], 0),
            ([tool, "score", folder, str(tmp_path / "feats.npy"), str(tmp_path / "q.hex")], 0),
            ([tool, "score", str(broken), str(tmp_path / "feats.npy"), str(tmp_path / "q.hex")], 1)]
    for args, rc in runs:
        proc = cpp.run(args, env=_env())
        assert proc.returncode == rc, (args[1], proc.stdout[-2000:], proc.stderr[-5000:])
        assert "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr[-5000:]
    assert "tokenizer kind 'bpe' is unknown" in proc.stderr


@pytest.mark.parametrize("extra", [[], ["-k", "2", "--shortlist", "3"]])
def test_example_has_no_leak_under_leaksanitizer(asan_build, bundle, gallery, extra):  # noqa: F811
    proc = cpp.run([os.path.join(asan_build, "kidrr_search"), bundle[0], gallery, "a dog runs on the grass", *extra],
                   env=_env())
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "LeakSanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr[-5000:]


def test_search_like_id_has_no_leak_or_undefined_behaviour(asan_build, bundle, retriever, tmp_path):  # noqa: F811
    from kidrr.gallery import GalleryWriter, create_gallery
    folder = str(tmp_path / "g")
    create_gallery(folder, retriever.bundle_id, regions=4, dim=retriever.planner.dim, locals_dtype="fp16")
    g = retriever.encode_images(features(9, 4, seed=4))
    with GalleryWriter(folder) as w:
        w.add(g.globals, g.locals, [f"img-{i}" for i in range(9)])
        w.remove(["img-2"])
    for item, rc in (("img-5", 0), ("img-2", 1), ("nope", 1)):
        proc = cpp.run([os.path.join(asan_build, "kidrr_search"), bundle[0], folder, "--like-id", item, "-k", "3"],
                       env=_env())
        assert proc.returncode == rc, proc.stderr[-5000:]
        assert "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr[-5000:]
    assert "KIDRR_ERR_UNKNOWN_ITEM" in proc.stderr


def test_example_error_paths_have_no_leak(asan_build, bundle, tmp_path):  # noqa: F811
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, FEATURES + 1), dtype=np.float32))
    proc = cpp.run([os.path.join(asan_build, "kidrr_search"), bundle[0], str(tmp_path / "wrong.npy"), "a dog"], env=_env())
    assert proc.returncode == 1 and "features have size" in proc.stderr
    assert "LeakSanitizer" not in proc.stderr, proc.stderr[-5000:]


def test_example_is_clean_under_valgrind(bundle, gallery):  # noqa: F811
    if not shutil.which("valgrind"):
        pytest.skip("valgrind is not installed (LeakSanitizer covers leaks in the ASan build)")
    built = cpp.build("release")
    supp = os.path.join(cpp.SOURCE, "scripts", "valgrind-ort.supp")
    proc = cpp.run(["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=9",
                    f"--suppressions={supp}", os.path.join(built, "kidrr_search"), bundle[0], gallery,
                    "a dog runs on the grass"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "definitely lost: 0 bytes" in proc.stderr or "no leaks are possible" in proc.stderr, proc.stderr[-3000:]
