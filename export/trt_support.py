"""What TensorRT's ONNX parser accepts, written from onnx-tensorrt's docs/operators.md (TensorRT 10.x).

Only ops marked supported there are listed. Opset range: TensorRT 10.0 parses opsets 9..20
(later 10.x releases go to 24); a bundle inside 9..20 parses with every TensorRT 10 and 11.
"""
TRT_MIN_OPSET, TRT_MAX_OPSET = 9, 20

SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GRU HardSigmoid HardSwish Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop
LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear Range Reciprocal
ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# Ops whose listed restriction is that an axes-like input must be a build-time constant.
CONSTANT_INPUTS = {op: 1 for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                    "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
                                    "Squeeze", "Unsqueeze")}

# Tensor element types the parser takes (UINT8 only as network input/output); no DOUBLE inside.
SUPPORTED_DTYPES = {"float32", "float16", "bfloat16", "int32", "int64", "int8", "bool"}

WHY_UNSUPPORTED = {
    "DynamicQuantizeLinear": "int8 bundles use ONNX Runtime's dynamic quantization; build TensorRT engines "
                             "from an fp32 or fp16 bundle",
    "MatMulInteger": "int8 bundles use ONNX Runtime's dynamic quantization; build TensorRT engines from an "
                     "fp32 or fp16 bundle",
}
