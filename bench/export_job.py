"""Child process: export one bundle (needs torch). python -m kidrr.bench.export_job CKPT OUT PRECISION"""
import sys

from kidrr.errors import KidrrError


def main(argv) -> int:
    from kidrr.export.bundle import export_bundle
    from kidrr.export.quantize import CalibrationError
    checkpoint, out, precision = argv[:3]
    calibration = argv[3] if len(argv) > 3 else None
    options = dict(force=True, verify=True, recall_images=100, progress=False, log=lambda msg: None)
    try:
        # verify: parity with PyTorch at sample shapes, and a recall check on 100 dev images for fp16/int8
        try:
            export_bundle(checkpoint, out, precision=precision, calibration=calibration, **options)
        except CalibrationError as exc:
            if precision != "int8":
                raise
            # No data to calibrate static int8 on: the bench still measures the dynamic fallback, and says so.
            print(f"int8: {exc}; benching the int8-dynamic fallback instead")
            export_bundle(checkpoint, out, precision="int8-dynamic", **options)
    except KidrrError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
