"""Metadata filters: one JSON form, checked against a gallery's fields, evaluated on the columns.

    {"album": "beach"}                                   equality (a list field: it contains the value)
    {"year": {"gte": 2019, "lt": 2021}}                  ranges on numbers and dates ("2019-07-01")
    {"camera": {"in": ["Pixel 7", "iPhone 13"]}}         any of
    {"tags": {"ne": "private"}}, {"gps": {"exists": true}}
    {"and": [F, ...]}, {"or": [F, ...]}, {"not": F}      several keys in one object: all of them

A compiled filter yields, per segment, a boolean mask of the live rows it keeps; the first stage
turns it into a faiss IDSelector (or scans just those rows). Nothing parses JSON per item.
Spec and semantics (absent fields, `ne`, `not`): docs/gallery.md.
"""
from __future__ import annotations

import json

import numpy as np

from kidrr.errors import InputError

from .metadata import RESERVED, parse_date

MAX_FILTER_BYTES = 64 << 10
MAX_DEPTH = 16
MAX_NODES = 1024               # conditions and values together
RANGES = ("gt", "gte", "lt", "lte")
OPERATORS = ("eq", "ne", "in", "exists") + RANGES


class _Budget:
    def __init__(self):
        self.nodes = 0

    def spend(self, n: int = 1) -> None:
        self.nodes += n
        if self.nodes > MAX_NODES:
            raise InputError(f"the filter has more than {MAX_NODES} conditions and values; simplify it")


def parse_filter(where):
    """A filter as JSON text (str / bytes) or the parsed object -> the parsed object, size-checked."""
    if isinstance(where, (str, bytes)):
        raw = where.encode("utf-8") if isinstance(where, str) else where
        if len(raw) > MAX_FILTER_BYTES:
            raise InputError(f"the filter is {len(raw)} bytes, at most {MAX_FILTER_BYTES}")
        try:
            where = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InputError(f"the filter is not valid JSON ({str(exc)[:120]}); e.g. '{{\"album\": \"beach\"}}'") from None
    return where


def check_filter(fields: dict, where) -> None:
    """InputError unless the filter is well formed and every field it names is one of `fields`
    (field -> type) with values of that type."""
    _node(parse_filter(where), fields, "error", 0, _Budget())


def compile_filter(gallery, where, unknown: str = "error"):
    if unknown not in ("error", "none"):
        raise InputError(f"unknown must be 'error' or 'none', got {unknown!r}")
    tree = _node(parse_filter(where), gallery.fields, unknown, 0, _Budget())
    return Filter(gallery, tree)


def _node(doc, fields: dict, unknown: str, depth: int, budget: _Budget):
    if depth > MAX_DEPTH:
        raise InputError(f"the filter nests deeper than {MAX_DEPTH} levels; flatten it")
    if not isinstance(doc, dict) or not doc:
        raise InputError(f"a filter is a non-empty JSON object such as {{\"album\": \"beach\"}}, got "
                         f"{json.dumps(doc)[:80] if _jsonable(doc) else type(doc).__name__}")
    parts = []
    for key, value in doc.items():
        budget.spend()
        if key in ("and", "or"):
            if not isinstance(value, list) or not value:
                raise InputError(f"{key!r} takes a non-empty list of filters")
            parts.append((key, [_node(v, fields, unknown, depth + 1, budget) for v in value]))
        elif key == "not":
            parts.append(("not", _node(value, fields, unknown, depth + 1, budget)))
        else:
            parts.append(_condition(key, value, fields, unknown, budget))
    return parts[0] if len(parts) == 1 else ("and", parts)


def _jsonable(doc) -> bool:
    try:
        json.dumps(doc)
        return True
    except (TypeError, ValueError, RecursionError):
        return False


def _condition(field, value, fields: dict, unknown: str, budget: _Budget):
    if not isinstance(field, str) or field in RESERVED:
        raise InputError(f"bad filter key {field!r}")
    type_ = fields.get(field)
    if type_ is None and unknown == "error":
        known = ", ".join(sorted(fields)[:20]) or "none: its items carry no metadata"
        raise InputError(f"no metadata field {field[:80]!r} in this gallery (its fields: {known})")
    ops = value if isinstance(value, dict) else {"eq": value}
    if not ops:
        raise InputError(f"field {field!r}: an empty operator object; use e.g. {{\"eq\": ...}}")
    out = []
    for op, arg in ops.items():
        budget.spend()
        if op not in OPERATORS:
            raise InputError(f"field {field!r}: unknown operator {op!r}; operators are {OPERATORS}")
        if op == "exists":
            if not isinstance(arg, bool):
                raise InputError(f"field {field!r}: exists takes true or false")
            out.append(("cmp", field, op, arg))
            continue
        if op in RANGES and type_ not in ("number", "date", None):
            raise InputError(f"field {field!r} is a {type_}: ranges ({op}) apply to numbers and dates only")
        if op == "in":
            if not isinstance(arg, list) or not arg:
                raise InputError(f"field {field!r}: in takes a non-empty list of values")
            budget.spend(len(arg))
            args = [_value(field, type_, a) for a in arg]
        else:
            if isinstance(arg, list):
                raise InputError(f"field {field!r}: a list is not a value; use {{\"in\": [...]}} for any of several")
            args = _value(field, type_, arg)
        out.append(("cmp", field, op, args))
    return out[0] if len(out) == 1 else ("and", out)


def _value(field: str, type_: str | None, v):
    """A filter value converted to the column's representation; InputError when its type cannot match."""
    if type_ is None:          # a field no segment has: nothing matches, whatever the value
        return v
    if type_ in ("string", "strings"):
        if not isinstance(v, str):
            raise InputError(f"field {field!r} holds text; compare it with a string, got {json.dumps(v)[:40]}")
        return v.encode("utf-8", "surrogatepass")
    if type_ == "bool":
        if not isinstance(v, bool):
            raise InputError(f"field {field!r} is a boolean; compare it with true or false, got {json.dumps(v)[:40]}")
        return int(v)
    if type_ == "date":
        seconds = parse_date(v) if isinstance(v, str) else None
        if seconds is None:
            raise InputError(f"field {field!r} is a date; give an ISO date such as \"2019-07-01\" or "
                             f"\"2019-07-01T10:30:00\", got {json.dumps(v)[:40]}")
        return seconds
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise InputError(f"field {field!r} is a number; compare it with a number, got {json.dumps(v)[:40]}")
    return float(v)


class Filter:
    """A filter compiled for one gallery snapshot; masks() is computed once and reused."""

    def __init__(self, gallery, tree):
        self.gallery, self.tree = gallery, tree
        self._masks = None

    def masks(self) -> list:
        """Per segment, a bool mask of its live rows that the filter keeps."""
        if self._masks is None:
            out = []
            for seg in self.gallery.segments:
                mask = _eval(self.tree, seg)
                if len(seg.dead):
                    mask[seg.dead] = False
                out.append(mask)
            self._masks = out
        return self._masks

    def count(self) -> int:
        return int(sum(m.sum() for m in self.masks()))


def _eval(node, seg) -> np.ndarray:
    kind = node[0]
    if kind == "and":
        mask = np.ones(seg.rows, dtype=bool)
        for child in node[1]:
            mask &= _eval(child, seg)
        return mask
    if kind == "or":
        mask = np.zeros(seg.rows, dtype=bool)
        for child in node[1]:
            mask |= _eval(child, seg)
        return mask
    if kind == "not":
        return ~_eval(node[1], seg)
    _, field, op, arg = node
    col = seg.meta.get(field)
    if col is None:                     # no item of this segment has the field
        return np.full(seg.rows, op == "exists" and not arg, dtype=bool)
    if op == "exists":
        present = _present(col)
        return present if arg else ~present
    if col.type in ("string", "strings"):
        words = col.words()
        wanted = [words[a] for a in (arg if op == "in" else [arg]) if a in words]
        hit = _has_code(col, wanted)
        return (_present(col) & ~hit) if op == "ne" else hit
    v = np.asarray(col.arrays["values"])
    if col.type == "bool":
        present = v >= 0
        if op == "in":
            return np.isin(v, arg) & present
        return (present & (v != arg)) if op == "ne" else (v == arg)
    with np.errstate(invalid="ignore"):
        if op == "eq":
            return v == arg
        if op == "ne":
            return (v != arg) & ~np.isnan(v)
        if op == "in":
            return np.isin(v, arg)
        return {"gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}[op](v, arg)


def _present(col) -> np.ndarray:
    if col.type == "string":
        return np.asarray(col.arrays["codes"]) >= 0
    if col.type == "strings":
        return np.diff(np.asarray(col.arrays["offsets"])) > 0
    v = np.asarray(col.arrays["values"])
    return v >= 0 if col.type == "bool" else ~np.isnan(v)


def _has_code(col, wanted: list) -> np.ndarray:
    """Rows whose value (a string field) or one of whose values (a list field) is one of the codes."""
    codes = np.asarray(col.arrays["codes"])
    if not wanted:
        return np.zeros(col.rows, dtype=bool)
    hits = codes == wanted[0] if len(wanted) == 1 else np.isin(codes, wanted)
    if col.type == "string":
        return hits
    offsets = np.asarray(col.arrays["offsets"])
    mask = np.zeros(col.rows, dtype=bool)
    rows = np.searchsorted(offsets, np.flatnonzero(hits), side="right") - 1
    mask[rows] = True
    return mask
