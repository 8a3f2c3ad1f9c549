"""The front door: `kidrr VERB` lists every verb in data-flow order, the `kidrr-*` scripts are the same
commands, and `kidrr gallery add` / `kidrr gallery search` are exact shortcuts of `kidrr index` / `kidrr search`."""
import json
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

import test_runtime_helpers as helpers
from kidrr import cli
from kidrr.gallery import open_gallery

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_FLOW = ["render", "features", "train", "eval", "export", "index", "gallery", "search", "serve", "bench"]


def console_scripts() -> dict:
    """{script name: 'module:attr'} as setup.py declares them."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as fh:
        return dict(re.findall(r'"(kidrr[\w-]*)=([\w.]+:\w+)"', fh.read()))


def test_help_lists_every_verb_in_data_flow_order_without_importing_them():
    r = CliRunner().invoke(cli.main, ["--help"])
    assert r.exit_code == 0, r.output
    listed = re.findall(r"^  (\w+)  ", r.output.split("Commands")[1], flags=re.M)
    assert listed == DATA_FLOW


@pytest.mark.parametrize("verb", DATA_FLOW)
def test_each_verb_has_help_with_an_example_of_itself(verb):
    r = CliRunner().invoke(cli.main, [verb, "--help"])
    assert r.exit_code == 0, r.output
    example = r.output.split("Example:")[1].strip()
    assert example.startswith(f"kidrr {verb}"), example


def test_every_script_is_an_alias_of_its_verb():
    scripts = console_scripts()
    assert scripts.pop("kidrr") == "kidrr.cli:main"
    assert sorted(scripts) == sorted(f"kidrr-{v}" for v in DATA_FLOW)
    for name, target in scripts.items():
        module, attr = target.split(":")
        assert module == "kidrr.cli"
        verb = name[len("kidrr-"):]
        assert getattr(cli, attr).__name__ == f"kidrr_{verb}"
    assert CliRunner().invoke(cli.main, ["nope"]).exit_code == 2


def test_gallery_subcommands_each_have_an_example():
    group = cli.load_verb("gallery")
    assert {"add", "search"} <= set(group.commands)
    for sub in group.commands:
        r = CliRunner().invoke(cli.main, ["gallery", sub, "--help"])
        assert r.exit_code == 0 and f"kidrr gallery {sub}" in r.output.split("Example:")[1], r.output


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """(bundle, folder holding g.npy, l.npy, ids.txt) for a small random model."""
    from kidrr.runtime import open_bundle
    root = tmp_path_factory.mktemp("front-door")
    bundle = helpers.make_bundle(helpers.small_checkpoint(root / "ckpt"), root / "bundle")
    with open_bundle(bundle, threads=1) as rt:
        mem = rt.encode_images(helpers.random_features(20, seed=4))
    np.save(root / "g.npy", mem.globals)
    np.save(root / "l.npy", mem.locals)
    (root / "ids.txt").write_text("".join(f"pic{i:02d}.jpg\n" for i in range(20)))
    return bundle, root


def _vectors(root):
    return ["--globals", str(root / "g.npy"), "--locals", str(root / "l.npy"), "--ids", str(root / "ids.txt")]


def test_gallery_add_is_index_with_out_and_append(encoded, tmp_path):
    bundle, root = encoded
    run = CliRunner().invoke
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ra = run(cli.main, ["gallery", "add", a, "--bundle", bundle] + _vectors(root))
    rb = run(cli.main, ["index", "--out", b, "--append", "--bundle", bundle] + _vectors(root))
    assert (ra.exit_code, rb.exit_code) == (0, 0), ra.output + rb.output
    assert ra.stdout == rb.stdout == ""
    last = [r.stderr.splitlines()[-1] for r in (ra, rb)]     # after the progress bar
    assert last[0].replace(a, "G") == last[1].replace(b, "G") == "added 20 items to G; 20 live"
    ga, gb = open_gallery(a), open_gallery(b)
    assert ga.ids() == gb.ids() == [f"pic{i:02d}.jpg" for i in range(20)]
    np.testing.assert_array_equal(ga.gather(np.arange(20))[0], gb.gather(np.arange(20))[0])
    # the same refusals, word for word
    ra, rb = run(cli.main, ["gallery", "add", a] + _vectors(root)), run(cli.main, ["index", "--out", a, "--append"]
                                                                          + _vectors(root))
    assert ra.exit_code == rb.exit_code == 2 and ra.output == rb.output and "already in the gallery" in ra.output
    r = run(cli.main, ["index", "--out", a, "--bundle", bundle] + _vectors(root))      # no --append: a new gallery
    assert r.exit_code == 2 and "exists" in r.output
    r = run(cli.main, ["gallery", "add", str(tmp_path / "new")] + _vectors(root))
    assert r.exit_code == 2 and "kidrr gallery create" in r.output and not os.path.exists(tmp_path / "new")
    r = run(cli.main, ["index", "--out", str(tmp_path / "c"), "--images", str(tmp_path)] + _vectors(root))
    assert r.exit_code == 2 and "not both" in r.output
    r = run(cli.main, ["index", "--out", str(tmp_path / "c"), "--globals", str(root / "g.npy")])
    assert r.exit_code == 2 and "all three" in r.output


def test_gallery_search_is_search_with_gallery(encoded, tmp_path):
    from kidrr.runtime import open_bundle
    bundle, root = encoded
    folder = str(tmp_path / "g")
    assert CliRunner().invoke(cli.main, ["gallery", "add", folder, "--bundle", bundle] + _vectors(root)).exit_code == 0
    query = helpers.CAPTIONS[1]
    with open_bundle(bundle, threads=1) as rt:
        want = rt.search_text(query, k=4, gallery=open_gallery(folder, bundle_id=rt.bundle_id))
    for extra in ([], ["--shortlist", "8", "--first-stage", "exact"], ["--like-id", "pic03.jpg"]):
        args = ([] if "--like-id" in extra else [query]) + ["--bundle", bundle, "-k", "4", "--json"] + extra
        short = CliRunner().invoke(cli.main, ["gallery", "search", folder] + args)
        full = CliRunner().invoke(cli.main, ["search", "--gallery", folder] + args)
        assert short.exit_code == full.exit_code == 0, short.output + full.output
        assert short.stdout == full.stdout
        if not extra:
            got = [(h["file"], h["score"]) for h in json.loads(short.stdout)["results"]]
            assert [f for f, _ in got] == [i for i, _ in want]
            assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-6)
    r = CliRunner().invoke(cli.main, ["gallery", "search", folder, query, "--bundle", bundle, "--nprobe", "0"])
    assert r.exit_code == 2 and "--nprobe" in r.output


def test_search_is_two_stage_by_default(monkeypatch, tmp_path):
    """Without --shortlist the full scorer reranks the globals' best 100 (or k if larger); 0 scores every item."""
    import kidrr.photos.search as photo_search
    seen = []
    monkeypatch.setattr(photo_search, "search", lambda gallery, query, k, bundle, shortlist, *a, **kw: seen.append(shortlist) or [])
    for extra in ([], ["-k", "150"], ["--shortlist", "0"], ["--shortlist", "30"]):
        r = CliRunner().invoke(cli.main, ["search", "--gallery", str(tmp_path), "a dog", "--json"] + extra)
        assert r.exit_code == 0, r.output
    assert seen == [photo_search.DEFAULT_SHORTLIST, 150, None, 30] and photo_search.DEFAULT_SHORTLIST == 100
