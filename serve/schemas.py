"""Request and response bodies (JSON). Unknown fields are refused, numbers are not coerced from text.

Limits that depend on the start-up settings (k, k', caption length, item counts) are checked in
api.py, so the OpenAPI schema stays the same for every deployment.
"""
from __future__ import annotations

from typing import List, Optional, Union

from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, StrictStr

Number = Union[StrictFloat, StrictInt]
Matrix = List[List[Number]]           # one image: regions x features


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextSearch(Body):
    query: StrictStr
    k: StrictInt = 10
    shortlist: Optional[StrictInt] = None     # k': two-stage search; None: exact


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
