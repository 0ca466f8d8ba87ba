"""Installs the tfsidefuse package and its ``tfsidefuse`` command."""

import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, "tfsidefuse", "version.py")) as fh:
    exec(fh.read(), version)
with open(os.path.join(here, "README.md")) as fh:
    long_description = fh.read()

setup(
    name="tfsidefuse",
    version=version["__version__"],
    description="Side-information fusion for sequential recommendation: a Keras 3 / TensorFlow model zoo",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["tfsidefuse", "tfsidefuse.*"]),
    package_data={"tfsidefuse.presets": ["*/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10",
        "keras-rs>=0.4",
        "numpy>=1.26",
        "pandas>=2.0",
        "pyyaml>=6.0",
        "tensorboard>=2.20",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.6",  # `make test` runs the suite in two processes
            "ruff>=0.6",
            "tensorflow-datasets>=4.9",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "jax[cpu]>=0.4.36,<0.11",  # the test suite's second run, under KERAS_BACKEND=jax
        ],
        "serving": ["tensorflow-serving-api>=2.21,<2.22", "requests>=2.28"],
        "notebooks": [
            "jupyter",
            "ipykernel>=6.29",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "nbmake>=1.5",
            "matplotlib>=3.8",
            "tensorflow-datasets>=4.9",
        ],
        "tfds": ["tensorflow-datasets>=4.9"],
        # `tfsidefuse prepare --runner ...`: the preprocessing as Apache Beam pipelines (pyarrow comes with it).
        "beam": ["apache-beam>=2.78,<3"],
        # `tfsidefuse.export.ann`: approximate nearest-neighbour retrieval over an export's item embeddings.
        "ann": ["faiss-cpu>=1.9"],
        # `tfsidefuse.export.tfrs_bridge`: a TensorFlow Recommenders retrieval stack on an export (Keras 2, run
        # in its own process with TF_USE_LEGACY_KERAS=1); tf_keras follows TensorFlow's minor version.
        "tfrs": ["tensorflow-recommenders>=0.7.7,<0.8", "tf_keras>=2.21,<2.22"],
    },
    entry_points={"console_scripts": ["tfsidefuse=tfsidefuse.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
