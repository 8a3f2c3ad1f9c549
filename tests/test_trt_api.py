"""The TensorRT code checked without TensorRT: mypy checks every TensorRT attribute and call
signature used by export/trt_engines.py and runtime/trt_runner.py against tensorrt-stubs 10.13
(the whole TensorRT 10 Python API), so a typo or a removed API fails CI here. A planted typo, a
removed API and a wrong arity must fail the same check, so it is known to bite.

tensorrt-stubs is a plain package holding .pyi files (no `-stubs` name, no py.typed), so mypy does
not pick it up from site-packages; a copy is put on mypy_path. A handful of its signatures are not
valid Python (a parameter named `in`, a required parameter after defaulted ones): those lines are
repaired in the copy (`in` -> `in_`; or, if still invalid, `(*args, **kwargs)`: the name is still
checked, the arity not), and the test says how many.
"""
import ast
import importlib.util
import os
import re
import shutil
import textwrap

import pytest
from mypy import api as mypy_api   # in the [test] extra

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = [os.path.join(ROOT, "export", "trt_engines.py"), os.path.join(ROOT, "runtime", "trt_runner.py")]
STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")
PYTHON_KEYWORDS = ("in", "is", "from", "lambda", "global", "import", "class", "def", "pass", "with", "yield")


def _parses(line: str) -> bool:
    try:
        ast.parse(textwrap.dedent(line).rstrip().rstrip(":") + ": ...")
        return True
    except SyntaxError:
        return False


def repair_stub_line(line: str) -> tuple[str, str]:
    """(line, how it was repaired: '' | 'renamed' | 'loosened')."""
    if not line.lstrip().startswith("def ") or _parses(line):
        return line, ""
    fixed = line
    for word in PYTHON_KEYWORDS:
        fixed = re.sub(rf"([(,]\s*){word}(\s*:)", rf"\1{word}_\2", fixed)
    if _parses(fixed):
        return fixed, "renamed"
    head, _, _ = fixed.partition("(")
    returns = fixed.rsplit("->", 1)[1].rstrip().rstrip(":") if "->" in fixed else " None"
    return f"{head}(*args, **kwargs) ->{returns}:\n", "loosened"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """A repaired copy of tensorrt-stubs and a mypy config that reads it and skips everything else."""
    root = tmp_path_factory.mktemp("trt-stubs")
    repairs = {"renamed": 0, "loosened": 0}
    for package in STUB_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            pytest.fail(f"{package} stubs missing: pip install --no-deps tensorrt-stubs==10.13.0.35.1 (README)")
        source = list(spec.submodule_search_locations)[0]
        if not any(n.endswith(".pyi") for n in os.listdir(source)):
            pytest.fail(f"{source} holds no .pyi: a real TensorRT is installed; check against the stubs elsewhere")
        shutil.copytree(source, root / package)
        for dirpath, _, files in os.walk(root / package):
            for name in files:
                if not name.endswith(".pyi"):
                    continue
                path = os.path.join(dirpath, name)
                out = []
                with open(path, encoding="utf-8") as fh:
                    for line in fh:
                        line, how = repair_stub_line(line)
                        out.append(line)
                        if how:
                            repairs[how] += 1
                with open(path, "w", encoding="utf-8") as fh:
                    fh.writelines(out)
    config = root / "mypy.ini"
    config.write_text(textwrap.dedent(f"""\
        [mypy]
        mypy_path = {root}
        cache_dir = {root / 'cache'}
        check_untyped_defs = True
        follow_imports = skip
        ignore_missing_imports = True

        [mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
        follow_imports = normal
        ignore_missing_imports = False
        """))
    return str(config), repairs


def _mypy(config: str, files: list) -> tuple[int, str]:
    out, err, code = mypy_api.run(["--config-file", config, "--no-error-summary", "--hide-error-context", *files])
    return code, out + err


PLANTS = {   # (file, real text, planted text, what mypy must say)
    "typo": (0, "builder.create_network(flags)", "builder.create_netwrk(flags)", "create_netwrk"),
    "removed API": (1, "context.execute_async_v3(stream.cuda_stream)", "context.execute_async_v2([], stream.cuda_stream)",
                    "execute_async_v2"),
    "arity": (0, "set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)",
              "set_memory_pool_limit(int(workspace_mb) << 20)", "set_memory_pool_limit"),
    "enum member": (1, "trt.TensorIOMode.OUTPUT", "trt.TensorIOMode.OUTPUTS", "OUTPUTS"),
}


def test_trt_code_matches_the_stubs_and_a_planted_error_fails(stubs, tmp_path):
    config, repairs = stubs
    assert repairs["renamed"] + repairs["loosened"] < 20, repairs   # a few bad lines, not a rewritten stub
    def copy(source, name):
        # Outside its package a module cannot import relatively: its kidrr imports are made absolute
        # (mypy skips them anyway); everything else is the file as it is.
        source = re.sub(r"from \.+(\w)", r"from kidrr.\1", re.sub(r"from \.+ import", "from kidrr import", source))
        path = tmp_path / name
        path.write_text(source)
        return str(path)

    real = [copy(open(m, encoding="utf-8").read(), "real_" + os.path.basename(m)) for m in MODULES]
    planted = []
    for case, (index, text, fake, _) in PLANTS.items():
        source = open(MODULES[index], encoding="utf-8").read()
        assert source.count(text) == 1, f"{case}: {text!r} is no longer in {MODULES[index]}; update the plant"
        planted.append(copy(source.replace(text, fake), f"planted_{case.replace(' ', '_')}.py"))
    # One mypy run over the real modules and the planted copies (a run costs seconds).
    code, report = _mypy(config, real + planted)
    real_errors = [line for line in report.splitlines() if any(line.startswith(m) for m in real)]
    assert real_errors == [], "\n".join(real_errors)
    for (case, (_, _, _, needle)), path in zip(PLANTS.items(), planted):
        hits = [line for line in report.splitlines() if line.startswith(path) and needle in line]
        assert hits, f"planted {case} was not caught:\n{report}"
    assert code == 1
    # And the check really reads the stubs: a name TensorRT 10 has is known, its type is not Any.
    probe = tmp_path / "probe.py"
    probe.write_text("import tensorrt as trt\nreveal_type(trt.Builder(trt.Logger()).create_network())\n")
    assert "INetworkDefinition" in _mypy(config, [str(probe)])[1]


@pytest.mark.parametrize("line, how", [
    ("    def f(self, in: int, out: int) -> int:\n", "renamed"),
    ("    def g(self, a: int = 1, b: int) -> int:\n", "loosened"),
    ("    def h(self, a: int) -> int:\n", "")])
def test_stub_repair(line, how):
    fixed, done = repair_stub_line(line)
    assert done == how and _parses(fixed)
