"""Request and response bodies (JSON). Unknown fields are refused, numbers are not coerced from text.

Limits that depend on the start-up settings (k, k', caption length, item counts) are checked in
api.py, so the OpenAPI schema stays the same for every deployment.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

Number = Union[StrictFloat, StrictInt]
Matrix = List[List[Number]]           # one image: regions x features


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A metadata filter (docs/gallery.md): {"album": "beach"}, {"year": {"gte": 2019}}, {"and": [...]}...
# Checked against the gallery's fields by the engine (422 naming what is wrong).
Where = Optional[Dict[str, Any]]
Dedup = Optional[Union[StrictFloat, StrictInt]]   # globals cosine threshold in (0, 1]; None: no collapsing
WHERE_DOC = ('metadata filter, e.g. {"album": "beach"} or {"taken": {"gte": "2019-01-01"}}; '
             'operators eq ne in gt gte lt lte exists, and / or / not (docs/gallery.md)')
DEDUP_DOC = "collapse near-duplicates: items whose globals' cosine with a better result is at least this"


class TextSearch(Body):
    query: StrictStr
    k: StrictInt = 10
    shortlist: Optional[StrictInt] = None     # k': two-stage search; None: exact
    where: Where = Field(None, description=WHERE_DOC)
    dedup: Dedup = Field(None, description=DEDUP_DOC)


class SimilarSearch(Body):
    id: Union[StrictStr, StrictInt]           # an item of the gallery (a v1 gallery's id from --ids, or its row)
    k: StrictInt = 10
    where: Where = Field(None, description=WHERE_DOC)
    dedup: Dedup = Field(None, description=DEDUP_DOC)


class ImageSearch(Body):
    features: Matrix                          # (R, F) region features of one image
    k: StrictInt = 10
    shortlist: Optional[StrictInt] = None


class ScoreRequest(Body):
    captions: List[StrictStr]
    features: List[Matrix]                    # (n, R, F)


class EncodeRequest(Body):
    captions: Optional[List[StrictStr]] = None
    features: Optional[List[Matrix]] = None


class ImageHit(BaseModel):
    id: Union[StrictStr, StrictInt]
    position: Optional[int]                   # row in a v1 gallery; None for format-2 galleries (ids only)
    score: float


class CaptionHit(BaseModel):
    position: int
    caption: str
    score: float


class TextSearchResponse(BaseModel):
    bundle: str
    k: int
    shortlist: Optional[int]
    results: List[ImageHit]


class SimilarResponse(BaseModel):
    bundle: str
    k: int
    results: List[ImageHit]


class ItemResponse(BaseModel):
    bundle: str
    id: str
    metadata: Dict[str, Any]      # strings, numbers, booleans, dates (ISO strings), lists of strings
    thumbnail: bool                                              # GET /v1/items/{id}/thumbnail has one


class ImageSearchResponse(BaseModel):
    bundle: str
    k: int
    shortlist: Optional[int]
    results: List[CaptionHit]


class ScoreResponse(BaseModel):
    bundle: str
    scores: List[List[float]]                 # (images, captions)


class EncodeResponse(BaseModel):
    bundle: str
    caption_globals: Optional[List[List[float]]] = None
    image_globals: Optional[List[List[float]]] = None


class ErrorBody(BaseModel):
    kind: str
    message: str


class ErrorResponse(BaseModel):
    bundle: Optional[str]
    error: ErrorBody
