"""kidrr.export: a KIDRR checkpoint -> an ONNX bundle (custom `kidrr` ops as model-local functions),
its checks (parity, TensorRT lint) and TensorRT engines. See docs/export.md."""
