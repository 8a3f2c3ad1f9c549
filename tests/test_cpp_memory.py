"""Memory safety of the C++ runtime: its tests under ASan + UBSan (+ LeakSanitizer), and the
kidrr_search example without leaks under LeakSanitizer and under valgrind.

Uses build/cpp/asan (Debug, -fsanitize=address,undefined; cached like the release build).
"""
import os
import shutil

import numpy as np
import pytest

import test_cpp_support as cpp
from test_cpp_runtime import FEATURES, bundle, features, retriever  # noqa: F401 (fixtures)

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


@pytest.mark.parametrize("extra", [[], ["-k", "2", "--shortlist", "3"]])
def test_example_has_no_leak_under_leaksanitizer(asan_build, bundle, gallery, extra):  # noqa: F811
    proc = cpp.run([os.path.join(asan_build, "kidrr_search"), bundle[0], gallery, "a dog runs on the grass", *extra],
                   env=_env())
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "LeakSanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr[-5000:]


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
