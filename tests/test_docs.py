"""The documentation runs: every `kidrr ...` line of a ```sh block in README.md and docs/ names a real
verb and real options (its --help runs), the README's photo quickstart runs as written on the shipped
real-photo model, and every relative link and anchor resolves."""
import glob
import importlib.util
import os
import re
import shlex
import shutil

import click
import pytest
from click.testing import CliRunner

from kidrr import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [
    os.path.join(ROOT, "bench", "studies", "README.md")]
F8K = os.path.join(ROOT, "..", "shared", "data", "f8k-photos")
SCRIPT = re.compile(r"^kidrr(-[a-z]+)?$")


def read(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def sh_blocks(text):
    """(label, lines) per ```sh block; label is the **bold** text of the paragraph just above it."""
    out = []
    for m in re.finditer(r"```sh\n(.*?)```", text, flags=re.S):
        above = text[:m.start()].rstrip().rsplit("\n\n", 1)[-1]
        label = re.findall(r"\*\*(.+?)\*\*", above)
        body = m.group(1).replace("\\\n", " ")
        out.append((label[0] if label else "", [ln for ln in body.splitlines() if ln.strip()]))
    return out


def commands(line):
    """The argv of each simple command on a shell line (pipes, && and ; split it; VAR=x prefixes dropped)."""
    try:
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        tokens = list(lex)
    except ValueError:
        tokens = line.split()
    argv, out = [], []
    for t in tokens + [";"]:
        if t in (";", "&&", "||", "|", "&", "(", ")"):
            if argv:
                out.append(argv)
            argv = []
        elif argv or not re.match(r"^[A-Z_]+=", t):
            argv.append(t)
    return out


def kidrr_lines():
    """(file, line, argv) of every kidrr command in every ```sh block."""
    found = []
    for path in DOCS:
        for _, lines in sh_blocks(read(path)):
            for line in lines:
                for argv in commands(line):
                    if SCRIPT.match(argv[0]):
                        found.append((os.path.relpath(path, ROOT), line, argv))
    return found


def resolve(argv):
    """(click command, the names walked) for `kidrr VERB [SUB]` or `kidrr-VERB [SUB]`."""
    if argv[0] == "kidrr":
        verb, rest = argv[1], argv[2:]
    else:
        verb, rest = argv[0][len("kidrr-"):], argv[1:]
    cmd, names = cli.load_verb(verb), [verb]
    while isinstance(cmd, click.Group) and rest and rest[0] in cmd.commands:
        cmd, names, rest = cmd.commands[rest[0]], names + [rest[0]], rest[1:]
    return cmd, names, rest


def option_names(cmd):
    return {o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}


LINES = kidrr_lines()


def test_there_are_commands_to_check_and_the_readme_is_short():
    assert len(LINES) > 30
    assert len(read(README).splitlines()) <= 250
    first_screen = "\n".join(read(README).splitlines()[:40])
    assert "pip install torch==2.13.0" in first_screen and "kidrr bench" in first_screen


@pytest.mark.parametrize("where,line,argv", LINES, ids=[f"{f}:{' '.join(a[:3])}" for f, _, a in LINES])
def test_every_documented_command_exists_with_its_options(where, line, argv):
    if argv == ["kidrr"] or argv[1:2] in (["--help"], ["--version"]):
        return
    try:
        cmd, names, rest = resolve(argv)
    except KeyError:
        pytest.fail(f"{where}: `{line}` names no kidrr verb")
    r = CliRunner().invoke(cli.main, names + ["--help"])
    assert r.exit_code == 0, f"{where}: `kidrr {' '.join(names)} --help` failed: {r.output}"
    known = option_names(cmd)
    for token in rest:
        opt = token.strip("[]").split("=")[0]
        if opt.startswith("--") and len(opt) > 2:
            assert opt in known, f"{where}: `{line}`: kidrr {' '.join(names)} has no option {opt}"


def test_every_script_in_the_docs_is_documented_and_named_modules_exist():
    text = "\n".join(read(p) for p in DOCS)
    for verb, *_ in cli.VERBS:
        assert f"kidrr {verb}" in text, f"kidrr {verb} is not documented"
    for module in sorted(set(re.findall(r"python -m (kidrr[\w.]*)", text))):
        assert importlib.util.find_spec(module) is not None, f"python -m {module}: no such module"
    for script in sorted(set(re.findall(r"python ((?:bench|runtime)/[\w/]+\.py)", text))):
        assert os.path.isfile(os.path.join(ROOT, script)), f"python {script}: no such file"


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    in_code = False
    for line in read(path).splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = re.match(r"^#{1,6} (.+)$", line)
        if m and not in_code:
            s = slug(m.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


@pytest.mark.parametrize("path", DOCS, ids=[os.path.relpath(p, ROOT) for p in DOCS])
def test_every_relative_link_resolves(path):
    text = read(path)
    here = os.path.dirname(path)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    for target in links:
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(here, file)) if file else path
        assert os.path.exists(full), f"{os.path.relpath(path, ROOT)}: link {target} points at nothing"
        if anchor and full.endswith(".md"):
            assert anchor in anchors(full), f"{os.path.relpath(path, ROOT)}: no heading #{anchor} in {file or 'itself'}"
    # plain mentions of a doc page (`docs/x.md`) must name a page that exists too
    for page in set(re.findall(r"(?<![\w/-])docs/[\w.-]+\.(?:md|png)", text)):
        assert os.path.exists(os.path.join(ROOT, page)), f"{os.path.relpath(path, ROOT)} names {page}: no such file"


@pytest.mark.skipif(not os.path.isdir(F8K), reason="needs ../shared/data/f8k-photos")
def test_the_readme_photo_quickstart_runs_as_written(tmp_path):
    """The README's 'Search my photos' block, line by line, on four real photos and the shipped model
    (its bundle is exported into the cache once, as a newcomer's first run does), one in a sub-folder; the demo line is
    checked by test_pixel_path and only its options are checked here."""
    block = [lines for label, lines in sh_blocks(read(README)) if label.startswith("Search my photos")]
    assert len(block) == 1
    trip = tmp_path / "trip"
    trip.mkdir()
    with open(os.path.join(F8K, "dev_ids.txt")) as fh:
        names = fh.read().split()[:4]
    for name in names:
        shutil.copy(os.path.join(F8K, "images", name), trip / name)
    shutil.copy(trip / names[0], trip / "dog.jpg")
    (trip / "beach").mkdir()                      # a sub-folder, as the README's --where example filters on
    shutil.move(str(trip / names[1]), trip / "beach" / names[1])
    ran = 0
    for line in block[0]:
        line = line.replace("~/Pictures/trip", str(trip)).replace("trip.gallery", str(tmp_path / "trip.gallery"))
        for argv in commands(line):
            if "--demo" in argv:
                continue
            r = CliRunner().invoke(cli.main, argv[1:])
            assert r.exit_code == 0, f"`{line}` exited {r.exit_code}: {r.output[-2000:]}"
            if argv[1] == "search":
                ranked = [ln for ln in r.stdout.splitlines() if re.match(r"^\s*\d+\s+-?[\d.]+\s+\S", ln)]
                assert ranked, f"`{line}` listed no photos: {r.output[-1000:]}"
            ran += 1
    assert ran == 4
