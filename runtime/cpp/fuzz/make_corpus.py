"""Write the fuzzers' seed corpus (fuzz/corpus/<harness>/): tiny valid files and the crafted
ones found by reading the code. Rerun after changing a file format: python runtime/cpp/fuzz/make_corpus.py
"""
import io
import json
import os
import zipfile

import numpy as np

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
IDENTITY = "4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4"  # fuzz_common.hpp kIdentity
D = 4  # fuzz_common.hpp kEmbedSize


def write(harness, name, data: bytes):
    os.makedirs(os.path.join(HERE, harness), exist_ok=True)
    with open(os.path.join(HERE, harness, name), "wb") as fh:
        fh.write(data)


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_with_shape(shape: str, data: bytes) -> bytes:
    """A .npy whose header claims `shape` (a Python tuple literal), followed by `data`."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % shape
    header = header.ljust(((len(header) + 11) // 64 + 1) * 64 - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data


def npz(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name + ".npy", date_time=(2026, 1, 1, 0, 0, 0)), data)  # reproducible bytes
    return buf.getvalue()


def gallery(locals_, globals_, identity=IDENTITY) -> dict:
    return {"format": npy(np.array("kidrr-gallery/1")), "bundle_id": npy(np.array(identity)),
            "locals": npy(locals_), "globals": npy(globals_)}


def main():
    rng = np.random.default_rng(0)
    sha = "0" * 64
    io_ = lambda *names: [{"name": n, "dtype": "int64" if n in ("ids", "lengths") else "float32"} for n in names]
    manifest = {
        "format": "kidrr-bundle/1", "precision": "fp32",
        "model": {"feature_size": 8, "embed_size": D, "vocab_size": 6, "max_caption_len": 12},
        "tokenizer": {"rules": "kidrr-basic/1", "vocab": "vocab.json", "max_caption_len": 12},
        "graphs": {"image_encoder": {"file": "image_encoder.onnx", "sha256": sha, "inputs": io_("features"),
                                     "outputs": io_("img_locals", "img_global")},
                   "text_encoder": {"file": "text_encoder.onnx", "sha256": sha, "inputs": io_("ids", "lengths"),
                                    "outputs": io_("cap_locals", "cap_global")},
                   "similarity": {"file": "similarity.onnx", "sha256": sha,
                                  "inputs": io_("img_locals", "img_global", "cap_locals", "cap_global", "lengths"),
                                  "outputs": io_("scores")}},
        "files": {"vocab.json": sha},
    }
    write("manifest", "valid.json", json.dumps(manifest, indent=1).encode())
    write("manifest", "outside.json", json.dumps(dict(manifest, files={"../vocab.json": sha})).encode())
    write("manifest", "types.json", json.dumps(dict(manifest, model={"feature_size": "8", "embed_size": 2.5})).encode())
    minilm = dict(manifest, model=dict(manifest["model"], text_encoder="minilm-l6", vocab_size=30522),
                  tokenizer={"kind": "wordpiece", "file": "tokenizer.json", "max_caption_len": 512},
                  files={"tokenizer.json": sha})
    write("manifest", "wordpiece.json", json.dumps(minilm, indent=1).encode())
    vocab = {"format": "kidrr-vocab/1", "tokenizer": "kidrr-basic/1",
             "words": ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "caf\u00e9", "\U0001f436"]}
    write("vocab", "valid.json", json.dumps(vocab).encode())
    write("vocab", "escapes.json", json.dumps(vocab, ensure_ascii=True).encode())
    write("vocab", "caption.txt", "A Dog, runs!\t\u00c9t\u00e9 \U0001f600 \x1c".encode())
    write("npy", "f4.npy", npy(rng.normal(size=(2, 3, 2)).astype(np.float32)))
    write("npy", "u.npy", npy(np.array("kidrr-gallery/1")))
    write("npy", "empty.npy", npy(np.zeros((0, 4), np.float32)))
    write("npy", "overflow.npy", npy_with_shape("(4611686018427387905, 1, 256)", b"\0" * 1024))
    locs = rng.normal(size=(3, 2, D)).astype(np.float32)
    globs = rng.normal(size=(3, D)).astype(np.float32)
    good = npz(gallery(locs, globs))
    for harness in ("npz", "gallery"):
        write(harness, "gallery.npz", good)
        overflow = gallery(locs, globs)
        overflow["locals"] = npy_with_shape("(4611686018427387905, 1, %d)" % D, b"\0" * (4 * D))
        write(harness, "overflow.npz", npz(overflow))
        flipped = bytearray(good)
        flipped[good.index(npy(locs)) + 200] ^= 1  # a data byte of locals: only the CRC notices
        write(harness, "crc.npz", bytes(flipped))
        nan = locs.copy()
        nan[1, 0, 0] = np.nan
        write(harness, "nan.npz", npz(gallery(nan, globs)))
    gallery2_seeds()
    wordpiece_seeds()


def wordpiece_seeds():
    """A tiny BERT tokenizer.json in the layout of all-MiniLM-L6-v2's (which is not copied here), a
    BertProcessing variant, and a caption full of the normalizer's hard cases."""
    special = lambda i, t: {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                            "normalized": False, "special": True}
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "##s", "run", "##ning", "cafe", "\u65e5",
             ",", "\u1100", "##\u1161", "i", "\u03c3", "##\u03b1", "x\U0001d16e\U0001d16d"]
    tok = {"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [special(i, t) for i, t in enumerate(words[:5])],
           "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                          "strip_accents": None, "lowercase": True},
           "pre_tokenizer": {"type": "BertPreTokenizer"},
           "post_processor": {"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                         {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                              "pair": [], "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                                                             "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
           "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
           "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                     "max_input_chars_per_word": 100, "vocab": {w: i for i, w in enumerate(words)}}}
    write("wordpiece", "tokenizer.json", json.dumps(tok, indent=1, ensure_ascii=False).encode())
    bert = dict(tok, post_processor={"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
                normalizer=dict(tok["normalizer"], strip_accents=False, lowercase=False))
    write("wordpiece", "bert_processing.json", json.dumps(bert).encode())
    write("wordpiece", "caption.txt", ("A Dogs, running [MASK] caf\u00e9 \u0130 \u03a3\u0391 \u65e5\u672c \uac00 x\U0001d16d\U0001d16e "
                                       "\ufb01 \u1e0b\u0323 \U0001f600\u200d\x85\xa0\x01" + "z" * 120).encode())


def gallery2_seeds():
    """A real format-2 manifest (kidrr.gallery's writer: two segments, a removal) and a segment header."""
    import tempfile
    from kidrr.gallery import GalleryWriter, create_gallery
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "g")
        create_gallery(folder, IDENTITY, regions=2, dim=D, locals_dtype="int8")
        with GalleryWriter(folder) as w:
            for lo in (0, 3):
                w.add(rng.normal(size=(3, D)).astype(np.float32), rng.normal(size=(3, 2, D)).astype(np.float32),
                      [f"img-{i}" for i in range(lo, lo + 3)])
            w.remove(["img-1"])
        with open(os.path.join(folder, "manifest.json"), "rb") as fh:
            write("gallery2", "manifest.json", fh.read())
        with open(os.path.join(folder, "seg-000000", "globals.npy"), "rb") as fh:
            write("gallery2", "globals.npy", fh.read())


if __name__ == "__main__":
    main()
