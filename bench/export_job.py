"""Child process: export one bundle (needs torch). python -m kidrr.bench.export_job CKPT OUT PRECISION"""
import sys

from kidrr.errors import KidrrError


def main(argv) -> int:
    from kidrr.export.bundle import export_bundle
    checkpoint, out, precision = argv
    try:
        # verify: parity with PyTorch at sample shapes, and a recall check on 100 dev images for fp16/int8
        export_bundle(checkpoint, out, precision=precision, force=True, verify=True, recall_images=100,
                      progress=False, log=lambda msg: None)
    except KidrrError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
