"""setup.py: a thin wrapper that drives the CMake build for pip.

    pip install --no-build-isolation .        # a regular install
    pip install --no-build-isolation -e .     # an editable install

Build isolation must be off: the extension is compiled against the torch that
is installed in the environment (an isolated build would fetch a second torch).
The CMake switches can be given as environment variables:

    SPECDEC_CUDA=AUTO|ON|OFF       compile the CUDA kernels (AUTO: when torch is a
                                   CUDA build and nvcc is found)
    SPECDEC_CUDA_ARCHS="8.0;9.0a"  CUDA architectures (TORCH_CUDA_ARCH_LIST also works)
    SPECDEC_BUILD_TESTS=AUTO|ON|OFF  the GoogleTest C++ tests (AUTO: when GTest is found)
    SPECDEC_BUILD_DIR=build/release  the CMake build folder (kept: builds are incremental)
    CMAKE_BUILD_PARALLEL_LEVEL=N   parallel compile jobs
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    text = (ROOT / "CMakeLists.txt").read_text()
    match = re.search(r"project\(specdec_cuda VERSION ([0-9.]+)", text)
    if not match:
        raise RuntimeError("setup.py: no version in CMakeLists.txt project()")
    return match.group(1)


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure and build with CMake, then copy _C and libspecdec_ops beside the package."""

    def build_extension(self, ext: Extension) -> None:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                "specdec_cuda: torch must be installed before building; build with "
                "`pip install --no-build-isolation .`"
            ) from exc
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(os.environ.get("SPECDEC_BUILD_DIR", ROOT / "build" / "release"))
        if not build_dir.is_absolute():
            build_dir = ROOT / build_dir
        bin_dir = Path(sys.executable).parent
        cmake = shutil.which("cmake", path=str(bin_dir)) or shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("specdec_cuda: cmake >= 3.24 is required (pip install cmake)")
        archs = os.environ.get("SPECDEC_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST")
        # CMake keeps its own output folder (the README scripts build in place
        # into specdec_cuda/); the artifacts are copied to where setuptools
        # wants them, which for editable installs is a temporary folder.
        args = [
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('CMAKE_BUILD_TYPE', 'Release')}",
        ]
        for var in ("SPECDEC_CUDA", "SPECDEC_BUILD_TESTS"):
            if os.environ.get(var):
                args.append(f"-D{var}={os.environ[var]}")
        if archs:
            args.append(f"-DSPECDEC_CUDA_ARCHS={archs.replace(' ', ';')}")
        fresh = not (build_dir / "CMakeCache.txt").exists()
        ninja = shutil.which("ninja", path=str(bin_dir)) or shutil.which("ninja")
        if fresh and ninja:
            args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        env = dict(os.environ)
        if "CUDA_HOME" not in env and Path("/usr/local/cuda/bin/nvcc").exists():
            env["CUDA_HOME"] = "/usr/local/cuda"
        subprocess.check_call([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], env=env)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.check_call([cmake, "--build", str(build_dir), "-j", jobs], env=env)
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = (build_dir / "python_artifacts.txt").read_text().split()
        for artifact in map(Path, manifest):
            target = out_dir / artifact.name
            if artifact.resolve() != target.resolve():
                shutil.copy2(artifact, target)


setup(
    name="specdec_cuda",
    version=read_version(),
    description="Speculative-decoding kernels (tree attention, KV rollback, acceptance "
    "sampling) as PyTorch custom ops, CPU and CUDA",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["specdec_cuda", "specdec_cuda.*"]),
    # the bundled tiny model pair of the demo (about 17 MB)
    package_data={
        "specdec_cuda": [
            "assets/tiny/*.json",
            "assets/tiny/*.md",
            "assets/tiny/*/*.json",
            "assets/tiny/*/*.safetensors",
        ]
    },
    ext_modules=[CMakeExtension("specdec_cuda._C")],
    # vLLM loads it in every process when selected: VLLM_PLUGINS=specdec_cuda
    entry_points={"vllm.general_plugins": ["specdec_cuda = specdec_cuda.integrations.vllm:register"]},
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.10",
    install_requires=["torch>=2.11"],
    extras_require={
        "test": ["pytest", "numpy"],
        "loop": ["transformers>=5", "tokenizers", "safetensors", "tqdm", "matplotlib"],
    },
    zip_safe=False,
)
