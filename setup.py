"""lima_jax: LIMA's supervised fine-tuning recipe for LLaMA models in JAX."""
from setuptools import find_packages, setup

setup(
    name="lima_jax",
    version="0.1.0",
    description="LIMA (Less Is More for Alignment) fine-tuning of LLaMA models in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lima_jax", "lima_jax.*"]) + ["lima_jax.configs"],
    # The model configs live at the top level (configs/) and install as lima_jax.configs,
    # so `--config=65b` resolves from any working directory.
    package_dir={"lima_jax.configs": "configs"},
    # The embedded demo: `--config=tiny` trains on it with no download.
    # The curation command's editable lists: Stack Exchange sites by group, and the phrases of the
    # "refers to other answers" rule.
    package_data={"lima_jax.data": ["demo/train.jsonl", "demo/test.jsonl", "demo/tokenizer.model",
                                   "demo/dialogues.jsonl"],
                  "lima_jax.curate": ["exchanges.tsv", "reference_phrases.txt"],
                  "lima_jax.configs": ["ablations/*.py"]},  # `ablate --grid=NAME` finds them when installed
    install_requires=[
        "jax>=0.6.0",
        "flax>=0.12.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "tensorflow-datasets>=4.9.8",
        "sentencepiece>=0.2.0",
        # HF tokenizer.json files; Llama 3's tiktoken-format tokenizer.model (lima_jax.data.text_tokenizers).
        "tokenizers>=0.19",
        "tiktoken>=0.7",
        "jinja2>=3.1",  # chat templates (data.chat_format=template), rendered as transformers renders them
        "absl-py>=2.1.0",
        "ml-collections>=1.0.0",
        "safetensors>=0.4.3",
        # GGUF files (llama.cpp, Ollama) in and out: its reader, writer and dequantizers (lima_jax.weights.gguf).
        "gguf==0.19.0",
        "numpy>=1.26",
        "ml_dtypes>=0.5.0",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.7",
        # gs:// paths: etils.epath (lima_jax.storage) reads and writes them through gcsfs when TensorFlow is
        # absent; TensorBoard's gs:// writer (tensorboardX) uses google-cloud-storage.
        "etils[epath]>=1.7",
        "gcsfs>=2025.1.0",
        "google-cloud-storage>=2.14",
        # lima_jax.curate: Stack Exchange dumps are .7z archives; Pushshift's Reddit dumps are zstandard.
        "py7zr>=1.0",
        "zstandard>=0.22",
        # python -m lima_jax.serve: an ASGI app (Starlette) under an ASGI server (uvicorn).
        "starlette>=0.37",
        "uvicorn>=0.30",
    ],
    extras_require={
        # torch is pinned: an unpinned torch pulls several GB of CUDA wheels.
        # gcp-storage-emulator: the in-memory Cloud Storage that tests/storage/test_gcs.py runs gs:// paths against.
        # openai: the official client tests/serve/test_serve.py talks to the server with.
        # accelerate: transformers loads GGUF files through it (tests/weights/test_gguf.py checks our export there).
        # pytest-xdist: the suite runs in one process per core (pytest.ini).
        # wandb: --config.log.wandb's sink, run offline by tests/train/test_wandb.py.
        # peft: loads a LoRA run's --output_format=peft export onto its base (tests/weights/test_export_peft.py);
        # pinned so that it keeps the pinned CPU torch.
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "torch==2.13.0", "transformers>=4.45", "gcp-storage-emulator>=2026.7.18",
                 "openai>=1.40", "accelerate==1.15.0", "peft==0.21.2",
                 "wandb==0.31.0"],
        # Weights & Biases logging (--config.log.wandb=PROJECT), beside metrics.jsonl and TensorBoard.
        "wandb": ["wandb==0.31.0"],
        # libtpu lets JAX compile for TPU topologies on a CPU host (lima_jax.aot and its tests). On a
        # machine without a TPU, lima_jax keeps its TPU probe quiet (lima_jax/__init__.py).
        "aot": ["libtpu==0.0.51; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        "tpu": ["jax[tpu]"],
        "gpu": ["jax[cuda12]"],
    },
)
