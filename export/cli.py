"""kidrr export: `onnx` (bundle), `lint` (TensorRT parser check, no TensorRT needed), `trt` (engines)."""
from __future__ import annotations

import sys

import click

from ..errors import KidrrError, describe


def _fail(exc: Exception):
    click.echo(f"error: {describe(exc)}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})  # inherited by every subcommand
def main():
    """Export a KIDRR checkpoint to an ONNX bundle, lint it for TensorRT, build TensorRT engines."""


@main.command("onnx")
@click.option("--checkpoint", default=None, help="checkpoint folder (default: the shipped model)")
@click.option("--out", "out_dir", required=True, help="bundle folder to write")
@click.option("--opset", type=int, default=None, help="ONNX opset (18..20, default 18)")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "int8-dynamic"]), default="fp32",
              help="int8: static QDQ, calibrated (ONNX Runtime and TensorRT); int8-dynamic: the CPU-only fallback")
@click.option("--calibration", default=None,
              help="int8 calibration data: 'synthetic' or a folder with dev_ims.npy + dev_caps.txt "
                   "(default: the synthetic dev set when the model reads its features)")
@click.option("--accept-recall-loss", is_flag=True, help="keep an int8 bundle that loses more than 1 rSum")
@click.option("--force", is_flag=True, help="replace an existing bundle")
@click.option("--no-verify", is_flag=True, help="skip the torch-vs-onnxruntime parity and recall checks")
@click.option("--recall-images", type=int, default=None,
              help="images for the recall delta (int8: of the calibration data's held-out half; all)")
@click.option("--backbone", default=None,
              help="expected image backbone (default: the one recorded in the checkpoint's config, if any)")
def onnx_cmd(checkpoint, out_dir, opset, precision, calibration, accept_recall_loss, force, no_verify, recall_images,
             backbone):
    """Write the bundle (manifest.json, vocab.json, three ONNX graphs; plus preprocess.onnx and
    backbone.onnx when the checkpoint was trained on kidrr features output) and verify it."""
    from .bundle import export_bundle
    try:
        export_bundle(checkpoint, out_dir, precision=precision, opset=opset, force=force, verify=not no_verify,
                      recall_images=recall_images, backbone=backbone, calibration=calibration,
                      accept_recall_loss=accept_recall_loss)  # default log: above the progress bar
    except (KidrrError, OSError) as exc:
        _fail(exc)


@main.command("lint")
@click.option("--bundle", required=True, help="bundle folder")
def lint_cmd(bundle):
    """Check every graph against TensorRT's ONNX parser support (ops, dtypes, opset, dynamic axes)."""
    from .lint import lint_bundle
    try:
        report = lint_bundle(bundle)
    except (KidrrError, OSError) as exc:
        _fail(exc)
    bad = 0
    for graph, problems in report.items():
        click.echo(f"{graph}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for p in problems:
            click.echo(f"  - {p}")
        bad += len(problems)
    sys.exit(1 if bad else 0)


@main.command("trt")
@click.option("--bundle", required=True, help="bundle folder")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="engine precision (default: the bundle's)")
@click.option("--shapes", default=None, help="profile min:opt:max per axis, e.g. n=1:32:64,m=1:8:64,L=1:16:64")
@click.option("--workspace", type=int, default=2048, help="builder workspace in MB")
def trt_cmd(bundle, precision, shapes, workspace):
    """Build TensorRT engines into bundle/engines/<key>/ (cached; needs `pip install kidrr[trt]`)."""
    from .trt_engines import build_engines
    try:
        plans = build_engines(bundle, precision, shapes, workspace, log=lambda m: click.echo(m, err=True))
    except (KidrrError, OSError) as exc:
        _fail(exc)
    for graph, path in plans.items():
        click.echo(f"{graph}: {path}")


if __name__ == "__main__":
    main()
