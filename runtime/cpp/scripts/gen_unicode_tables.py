"""Generate runtime/cpp/src/unicode_tables.cpp: the per-code-point tables of the BERT WordPiece
tokenizer (src/wordpiece.cpp), measured from the `tokenizers` library itself.

Every table is what `tokenizers` does to each code point alone, so the C++ tokenizer matches the
Rust library's own Unicode data (Rust std for whitespace and lower case, its crates for categories
and NFD), whatever Unicode version Python's unicodedata has:

  flags      clean_text drops it / maps it to a space; handle_chinese_chars pads it; it is a
             nonspacing mark (strip_accents drops it after NFD); BertPreTokenizer splits on it
             (whitespace) or isolates it (punctuation)
  ccc        canonical combining class (NFD's reordering of marks): unicodedata's value, checked
             against tokenizers' NFD by reordering probes, which also find any code point the
             two disagree on
  decomp     NFD (full canonical decomposition; Hangul syllables are algorithmic, checked here)
  lower      Rust char::to_lowercase, one code point at a time (U+0130 -> "i\u0307"; no final-sigma
             rule, which tokenizers does not apply either)

The script ends by checking that the tables, applied as wordpiece.cpp applies them, reproduce the
whole BertNormalizer on every code point. Rerun when upgrading tokenizers:
    python runtime/cpp/scripts/gen_unicode_tables.py
(takes about a minute).
"""
import os
import sys
import unicodedata

import tokenizers
from tokenizers import normalizers, pre_tokenizers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "unicode_tables.cpp")
SEP = "|"  # a starter that no step changes, maps to or reorders across: batches probes

DROP, SPACE, CJK, MARK, PT_SPACE, PUNCT = 1, 2, 4, 8, 16, 32
S_BASE, L_BASE, V_BASE, T_BASE, L_COUNT, V_COUNT, T_COUNT = 0xAC00, 0x1100, 0x1161, 0x11A7, 19, 21, 28
N_COUNT, S_COUNT = V_COUNT * T_COUNT, L_COUNT * V_COUNT * T_COUNT


def code_points():
    return [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]


def batched(fn, strings, chunk=50000):
    """fn over each string, many per call, joined by SEP (strings must not hold SEP)."""
    out = []
    for i in range(0, len(strings), chunk):
        part = strings[i:i + chunk]
        got = fn(SEP.join(part)).split(SEP)
        assert len(got) == len(part), "a probe changed the separator"
        out += got
    return out


def bert(clean=False, chinese=False, strip=False, lower=False):
    return normalizers.BertNormalizer(clean_text=clean, handle_chinese_chars=chinese, strip_accents=strip,
                                      lowercase=lower).normalize_str


def per_cp(fn, cps):
    """fn(chr(cp)) for every cp, batched except for SEP itself."""
    plain = [cp for cp in cps if chr(cp) != SEP]
    res = dict(zip(plain, batched(fn, [chr(cp) for cp in plain])))
    res[ord(SEP)] = fn(SEP)
    return res


def hangul(cp):
    s = cp - S_BASE
    out = [L_BASE + s // N_COUNT, V_BASE + (s % N_COUNT) // T_COUNT]
    if s % T_COUNT:
        out.append(T_BASE + s % T_COUNT)
    return out


def main():
    cps = code_points()
    nfd_fn = normalizers.NFD().normalize_str
    clean = per_cp(bert(clean=True), cps)
    chinese = per_cp(bert(chinese=True), cps)
    nfd = per_cp(nfd_fn, cps)
    strip = per_cp(bert(strip=True), cps)
    lower = per_cp(bert(lower=True), cps)
    pretok = pre_tokenizers.BertPreTokenizer().pre_tokenize_str

    flags = {}
    decomp, lowercase = {}, {}
    for cp in cps:
        c, f = chr(cp), 0
        if clean[cp] == "":
            f |= DROP
        elif clean[cp] == " " and c != " ":
            f |= SPACE
        else:
            assert clean[cp] == c, hex(cp)
        if chinese[cp] == f" {c} ":
            f |= CJK
        else:
            assert chinese[cp] == c, hex(cp)
        if nfd[cp] != c:
            if S_BASE <= cp < S_BASE + S_COUNT:
                assert [ord(x) for x in nfd[cp]] == hangul(cp), hex(cp)
            else:
                decomp[cp] = [ord(x) for x in nfd[cp]]
        elif strip[cp] == "":
            f |= MARK
        else:
            assert strip[cp] == c, hex(cp)
        if lower[cp] != c:
            lowercase[cp] = [ord(x) for x in lower[cp]]
        pieces = [p for p, _ in pretok("a" + c + "a")]
        if pieces == ["a", "a"]:
            f |= PT_SPACE
        elif pieces == ["a", c, "a"]:
            f |= PUNCT
        else:
            assert pieces == ["a" + c + "a"], (hex(cp), pieces)
        flags[cp] = f
    # NFD output is made of NFD-stable code points only, so MARK is known for every one of them.
    assert all(x not in decomp for seq in decomp.values() for x in seq)
    # strip_accents on a decomposable code point = its decomposition without the marks.
    for cp, seq in decomp.items():
        assert strip[cp] == "".join(chr(x) for x in seq if not flags[x] & MARK), hex(cp)

    ccc = combining_classes(cps, decomp, nfd_fn)

    # The whole normalizer (MiniLM's settings), one code point at a time, from the tables.
    full = per_cp(bert(clean=True, chinese=True, strip=None, lower=True), cps)
    for cp in cps:
        assert full[cp] == model_normalize(cp, flags, decomp, lowercase, ccc), hex(cp)
    write(flags, ccc, decomp, lowercase)


def combining_classes(cps, decomp, nfd_fn):
    """Canonical combining classes as tokenizers' NFD orders marks, found by probing it."""
    stable = [cp for cp in cps if cp not in decomp and not S_BASE <= cp < S_BASE + S_COUNT and chr(cp) != SEP]
    hi, lo = "\u0345", "\u0334"  # ccc 240 and 1: a run hi y lo is reordered iff y is no starter
    assert nfd_fn(hi + lo) == lo + hi
    probes = [hi + chr(cp) + lo for cp in stable]
    nonstarters = [cp for cp, p, got in zip(stable, probes, batched(nfd_fn, probes)) if got != p]
    # One reference mark per class unicodedata knows; its order among them confirmed by NFD.
    refs = {}
    for cp in nonstarters:
        refs.setdefault(unicodedata.combining(chr(cp)), cp)
    assert 0 not in refs, f"tokenizers reorders U+{refs.get(0, 0):04X}, a starter to unicodedata"
    classes = sorted(refs)
    for a in classes:
        for b in classes:
            pair = chr(refs[a]) + chr(refs[b])
            assert nfd_fn(pair) == (pair if a <= b else pair[::-1]), (a, b)
    # Each non-starter: the class it neither moves before nor after.
    ccc = {}
    for cp in nonstarters:
        y = chr(cp)
        equal = [k for k in classes
                 if nfd_fn("a" + chr(refs[k]) + y) == "a" + chr(refs[k]) + y
                 and nfd_fn("a" + y + chr(refs[k])) == "a" + y + chr(refs[k])]
        assert len(equal) == 1, f"U+{cp:04X} has a combining class between unicodedata's: {equal}"
        ccc[cp] = equal[0]
    return ccc


def model_normalize(cp, flags, decomp, lowercase, ccc):
    """BertNormalizer(clean, chinese, strip, lower) on one code point, as wordpiece.cpp does it."""
    f = flags[cp]
    if f & DROP:
        return ""
    if f & SPACE:
        return " "
    seq = [cp]
    if f & CJK:
        seq = [0x20, cp, 0x20]
    out = []
    for x in seq:
        parts = hangul(x) if S_BASE <= x < S_BASE + S_COUNT else decomp.get(x, [x])
        out += parts
    out = [x for x in reorder(out, ccc) if not flags[x] & MARK]
    return "".join(chr(y) for x in out for y in lowercase.get(x, [x]))


def reorder(seq, ccc):
    """Canonical ordering: each run of non-starters stably sorted by class."""
    out, run = [], []
    for x in seq + [None]:
        if x is not None and ccc.get(x, 0):
            run.append(x)
            continue
        out += sorted(run, key=lambda y: ccc[y])
        run = []
        if x is not None:
            out.append(x)
    return out


def ranges(values: dict):
    """[(first, last, value)] over the code points with a non-zero value, merged."""
    out = []
    for cp in sorted(values):
        v = values[cp]
        if not v:
            continue
        if out and out[-1][1] == cp - 1 and out[-1][2] == v:
            out[-1][1] = cp
        else:
            out.append([cp, cp, v])
    return out


def rows(items, per_line):
    return "\n".join("    " + " ".join(items[i:i + per_line]) for i in range(0, len(items), per_line))


def write(flags, ccc, decomp, lowercase):
    flag_ranges = ranges(flags)
    ccc_ranges = ranges(ccc)
    pool, dec_entries, low_entries = [], [], []
    for table, entries in ((decomp, dec_entries), (lowercase, low_entries)):
        for cp in sorted(table):
            seq = table[cp]
            assert 1 <= len(seq) <= 4
            entries.append(f"{{0x{cp:X}, {len(pool)}, {len(seq)}}},")
            pool += seq
    assert len(pool) < 65536
    text = f"""// GENERATED by runtime/cpp/scripts/gen_unicode_tables.py from tokenizers {tokenizers.__version__}
// (Python unicodedata {unicodedata.unidata_version} for the combining classes, checked against
// tokenizers' NFD); do not edit. What tokenizers' BertNormalizer and BertPreTokenizer do to each
// code point: see the script for how each table was measured.
#include "unicode_tables.hpp"

namespace kidrr::unicode {{

const char* const kTablesSource = "tokenizers {tokenizers.__version__}";

const Range kFlags[] = {{
{rows([f"{{0x{a:X}, 0x{b:X}, {v}}}," for a, b, v in flag_ranges], 4)}
}};
const size_t kFlagsCount = sizeof(kFlags) / sizeof(kFlags[0]);

const Range kCombiningClass[] = {{
{rows([f"{{0x{a:X}, 0x{b:X}, {v}}}," for a, b, v in ccc_ranges], 4)}
}};
const size_t kCombiningClassCount = sizeof(kCombiningClass) / sizeof(kCombiningClass[0]);

const uint32_t kPool[] = {{
{rows([f"0x{x:X}," for x in pool], 10)}
}};

const Mapping kDecomposition[] = {{
{rows(dec_entries, 5)}
}};
const size_t kDecompositionCount = sizeof(kDecomposition) / sizeof(kDecomposition[0]);

const Mapping kLowercase[] = {{
{rows(low_entries, 5)}
}};
const size_t kLowercaseCount = sizeof(kLowercase) / sizeof(kLowercase[0]);

}}  // namespace kidrr::unicode
"""
    with open(OUT, "w") as fh:
        fh.write(text)
    print(f"wrote {OUT}: {len(flag_ranges)} flag ranges, {len(ccc_ranges)} class ranges, "
          f"{len(dec_entries)} decompositions, {len(low_entries)} lower-case mappings, pool {len(pool)}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
