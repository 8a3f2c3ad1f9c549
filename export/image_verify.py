"""Parity of a bundle's image graphs at export: pictures -> preprocess.onnx -> backbone.onnx -> KIDRR.

The pictures are drawn with Pillow from a seed and round-tripped through PNG and JPEG files in
memory, so they are decoded exactly as a user's files are. Checked: the preprocessing graph against
Pillow's BILINEAR on float images (the filter it implements), the ONNX backbone against the
PyTorch one (max abs <= BACKBONE_TOLERANCE), and the scores of the whole chain, ONNX Runtime
end to end vs PyTorch end to end (max abs <= verify.FP32_TOLERANCE).
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..images.decode import decode_image
from ..images.preprocess import Preprocessor
from . import verify

BACKBONE_TOLERANCE = 1e-4
PREPROCESS_TOLERANCE = 0.01 / 128      # 0.01 grey levels after (x - 127) / 128


def sample_pictures(n: int = 3, seed: int = 0) -> list:
    """n decoded RGB8 pictures of different sizes and formats (shapes on a background, noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = int(rng.integers(60, 400)), int(rng.integers(60, 400))
        img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            box = [x, y, x + int(rng.integers(8, w)), y + int(rng.integers(8, h))]
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if i % 2 else draw.rectangle)(box, fill=colour)
        pixels = np.clip(np.asarray(img).astype(int) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG" if i % 2 else "PNG", quality=90)
        out.append(decode_image(buf.getvalue(), name=f"sample {i}"))
    return out


def _pillow_reference(pixels: np.ndarray, side: int) -> np.ndarray:
    planes = [np.asarray(Image.fromarray(pixels[..., c].astype(np.float32), mode="F").resize((side, side),
                                                                                            Image.BILINEAR))
              for c in range(3)]
    return (np.stack(planes) - 127.0) / 128.0


@torch.no_grad()
def image_parity(model, backbone_net, sessions: dict, preprocess_graph) -> dict:
    """Max abs differences of the image path; sessions: ORT sessions of every bundle graph."""
    pictures = sample_pictures()
    pre = Preprocessor(preprocess_graph)
    images = pre.batch(pictures)
    diffs = {"preprocess.vs_pillow_bilinear": float(max(np.abs(img - _pillow_reference(p, pre.input_size)).max()
                                                        for img, p in zip(images, pictures)))}
    torch_feats = backbone_net(torch.from_numpy(images))
    ort_feats = sessions["backbone"].run(None, {"images": images})[0]
    diffs["backbone.features"] = float(np.abs(ort_feats - torch_feats.numpy()).max())
    one = sessions["backbone"].run(None, {"images": images[:1]})[0]
    diffs["backbone.features_batch1"] = float(np.abs(one - torch_feats[:1].numpy()).max())
    _, ids, lengths = verify.sample_inputs(model.cfg, n=1, m=4)
    il, ig = model.encode_images(torch_feats)
    cl, cg = model.encode_texts(torch.from_numpy(ids), torch.from_numpy(lengths))
    scores = model.score(il, ig, cl, cg, torch.from_numpy(lengths)).numpy()
    o_il, o_ig = sessions["image_encoder"].run(None, {"features": ort_feats})
    o_cl, o_cg = sessions["text_encoder"].run(None, {"ids": ids, "lengths": lengths})
    o_scores = sessions["similarity"].run(None, {"img_locals": o_il, "img_global": o_ig, "cap_locals": o_cl,
                                                 "cap_global": o_cg, "cap_lengths": lengths})[0]
    diffs["pixels_end_to_end.scores"] = float(np.abs(o_scores - scores).max())
    return {"max_abs_diff": diffs, "pictures": [list(p.shape) for p in pictures],
            "tolerances": {"preprocess": PREPROCESS_TOLERANCE, "backbone": BACKBONE_TOLERANCE,
                           "scores": verify.FP32_TOLERANCE}}


def check_image_parity(report: dict, precision: str) -> list:
    """Names of image-path outputs over their tolerance (scores only in fp32 bundles)."""
    d, bad = report["max_abs_diff"], []
    if not d["preprocess.vs_pillow_bilinear"] <= PREPROCESS_TOLERANCE:
        bad.append(f"preprocess {d['preprocess.vs_pillow_bilinear']:.3g}")
    for key in ("backbone.features", "backbone.features_batch1"):
        if not d[key] <= BACKBONE_TOLERANCE:
            bad.append(f"{key} {d[key]:.3g}")
    if precision == "fp32" and not d["pixels_end_to_end.scores"] <= verify.FP32_TOLERANCE:
        bad.append(f"pixels_end_to_end.scores {d['pixels_end_to_end.scores']:.3g}")
    return bad
