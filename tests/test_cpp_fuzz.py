"""The libFuzzer harnesses of the C++ file parsers and fused kernels (runtime/cpp/fuzz), kept alive in CI.

Builds them with clang fetched from Debian (scripts/fetch_clang.sh; cached in build/cpp/fuzz) under
ASan + UBSan and runs each for a few seconds from its seed corpus, which holds the crafted files of
the hostile-file fixes (an overflowing .npy header, a CRC-damaged and a NaN gallery). A sanitizer report, an
exception other than kidrr::Error, a timeout or a memory blow-up fails the test. The long runs are
runtime/cpp/scripts/fuzz.sh (docs/cpp.md reports them).
"""
import os
import re

import pytest

import test_cpp_support as cpp

HARNESSES = ["manifest", "vocab", "wordpiece", "npy", "npz", "gallery", "gallery2", "kernels"]
SECONDS = 2


@pytest.fixture(scope="module")
def fuzz_build():
    return cpp.build("fuzz")


@pytest.mark.parametrize("harness", HARNESSES)
def test_fuzzer_runs_clean_from_its_seeds(fuzz_build, harness, tmp_path):
    seeds = os.path.join(cpp.SOURCE, "fuzz", "corpus", harness)
    assert len(os.listdir(seeds)) >= 2, f"seed corpus {seeds} is missing"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:halt_on_error=1", UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    proc = cpp.run([os.path.join(fuzz_build, f"fuzz_{harness}"), f"-max_total_time={SECONDS}", "-rss_limit_mb=1024",
                    "-timeout=10", f"-artifact_prefix={tmp_path}/", str(corpus), seeds], env=env, timeout=120)
    log = proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(("crash-", "leak-", "timeout-", "oom-"))], log[-4000:]
    runs = int(re.search(r"Done (\d+) runs", log).group(1))
    inited = re.search(r"INITED cov: (\d+)", log)
    print(f"\nfuzz_{harness}: {runs} runs in {SECONDS}s, coverage {inited.group(1) if inited else '?'}")
    assert runs > 100 and inited and int(inited.group(1)) > 50  # it really ran the parser, not an empty loop
