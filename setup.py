"""Build of sparsekit and its compiled extension sparsekit._C.

Environment switches (all optional):
  SPARSEKIT_NO_EXTENSION=1   build a pure-Python package (the PyTorch references serve every op)
  SPARSEKIT_PREBUILT=1       editable installs only: sparsekit/_C*.so was already built in the tree
                             (`python setup.py build_ext --inplace`, as `make install` does); compile nothing.
                             An in-tree build keeps its objects in build/, so a later `pip wheel .` relinks
                             instead of compiling again.
  SPARSEKIT_CPU_ONLY=1       build the CPU kernels only, even where CUDA could be built
  SPARSEKIT_CUDA_ARCH_LIST   CUDA architectures, default "8.0;9.0a" (sm_90a: Hopper-only instructions)
  SPARSEKIT_PTXAS_VERBOSE=1  print ptxas register / spill reports for every CUDA kernel
  SPARSEKIT_NO_CUSPARSELT=1  build without the cuSPARSELt 2:4 path (cslt_* ops then raise on CUDA)
  CUSPARSELT_HOME            cuSPARSELt's root (include/cusparseLt.h, lib/libcusparseLt.so*); default: the
                             nvidia/cusparselt folder of the installed nvidia-cusparselt package
  MAX_JOBS                   parallel compile jobs (default 2)
  CUDA_HOME                  the CUDA toolkit (default: /usr/local/cuda where it exists)

CUDA is built when torch is a CUDA build and nvcc is found; no GPU is needed or asked for.
"""
import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def read_version():
    text = (ROOT / "sparsekit" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def sources(kind):
    """The compiled sources of one kind, from csrc/sources.txt (the list CMake reads too)."""
    out = []
    for line in (ROOT / "csrc" / "sources.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == kind:
            out.append(parts[1])
    return out


def find_cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and Path("/usr/local/cuda/bin/nvcc").exists():
        home = "/usr/local/cuda"
    if not home:
        nvcc = shutil.which("nvcc")
        if nvcc:
            home = str(Path(nvcc).resolve().parent.parent)
    if home and Path(home, "bin", "nvcc").exists():
        return home
    return None


def find_cusparselt(cuda_home):
    """(include dirs, library dir, library file) of cuSPARSELt, or None with the reason printed.

    cusparseLt.h includes cusparse.h, which the toolkit or the pip CUDA package (nvidia/cu13 or
    nvidia/cusparse) provides."""
    if env_flag("SPARSEKIT_NO_CUSPARSELT"):
        print("sparsekit: SPARSEKIT_NO_CUSPARSELT set: building without cuSPARSELt")
        return None
    site = [Path(p) for p in sys.path if p.endswith("site-packages")]
    home = os.environ.get("CUSPARSELT_HOME")
    roots = [Path(home)] if home else [s / "nvidia" / "cusparselt" for s in site]
    root = next((r for r in roots if (r / "include" / "cusparseLt.h").exists()), None)
    if root is None:
        print(f"sparsekit: cusparseLt.h not found under {[str(r) for r in roots]}: building without cuSPARSELt")
        return None
    libs = sorted((root / "lib").glob("libcusparseLt.so*"))
    if not libs:
        print(f"sparsekit: no libcusparseLt.so* in {root / 'lib'}: building without cuSPARSELt")
        return None
    header_dirs = [Path(cuda_home) / "include"] + [s / "nvidia" / d / "include" for s in site for d in ("cu13", "cusparse")]
    cusparse = next((d for d in header_dirs if (d / "cusparse.h").exists()), None)
    if cusparse is None:
        print("sparsekit: cusparse.h (needed by cusparseLt.h) not found: building without cuSPARSELt")
        return None
    print(f"sparsekit: cuSPARSELt from {root} ({libs[0].name})")
    return [str(root / "include"), str(cusparse)], str(root / "lib"), libs[0].name


def torch_pin():
    """An extension is tied to the torch it was compiled against."""
    import torch

    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return f"torch=={major}.{minor}.*"


def extensions():
    """Returns (ext_modules, cmdclass, install_requires)."""
    if env_flag("SPARSEKIT_NO_EXTENSION"):
        print("sparsekit: SPARSEKIT_NO_EXTENSION set: building without the compiled extension")
        return [], {}, ["torch>=2.5"]

    if env_flag("SPARSEKIT_PREBUILT"):
        built = sorted((ROOT / "sparsekit").glob("_C*.so"))
        if not built:
            sys.exit("sparsekit: SPARSEKIT_PREBUILT set but no sparsekit/_C*.so: run `python setup.py build_ext --inplace`")
        print(f"sparsekit: SPARSEKIT_PREBUILT set: using the in-tree {built[0].name}, compiling nothing")
        return [], {}, [torch_pin()]

    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read when torch.utils.cpp_extension is imported
    import logging

    import torch

    # "No CUDA runtime is found, using CUDA_HOME=...": logged at import on every machine without a GPU, where
    # building the CUDA kernels is the normal case (the line below says what is built and with which nvcc)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    os.environ.setdefault("MAX_JOBS", "2")
    with_cuda = (
        not env_flag("SPARSEKIT_CPU_ONLY") and torch.version.cuda is not None and cuda_home is not None
    )
    archs = os.environ.get("SPARSEKIT_CUDA_ARCH_LIST", "8.0;9.0a")
    print(
        f"sparsekit: torch {torch.__version__} (CUDA {torch.version.cuda}), nvcc at {cuda_home}; "
        f"building {'CPU and CUDA' if with_cuda else 'CPU'} kernels" + (f" for {archs}" if with_cuda else "")
    )

    define = [("SPARSEKIT_CUDA_ARCHS", f'"{archs if with_cuda else ""}"')]
    # -fopenmp: at::parallel_for is inline header code that runs in parallel only where the
    # calling file is compiled with OpenMP (torch's backend); it links torch's own libgomp.
    cxx = ["-O3", "-fopenmp", "-fvisibility=hidden", "-Wall", "-Wno-unused-parameter", "-Wno-psabi"]
    srcs = sources("core") + sources("torch")
    kwargs = dict(include_dirs=[str(ROOT / "csrc")], extra_link_args=["-fopenmp"])
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        define.append(("SPARSEKIT_WITH_CUDA", None))
        srcs += sources("cuda_core") + sources("torch_cuda")
        cslt = find_cusparselt(cuda_home)
        if cslt:
            inc, libdir, libfile = cslt
            define.append(("SPARSEKIT_WITH_CUSPARSELT", None))
            srcs += sources("torch_cusparselt")
            kwargs["include_dirs"] += inc
            # the file by name (the wheel ships libcusparseLt.so.0 without the unversioned link); found at run
            # time next to an installed wheel ($ORIGIN is sparsekit/, the nvidia package its sibling) or here
            kwargs["extra_link_args"] += [f"-L{libdir}", f"-l:{libfile}", "-Wl,-rpath,$ORIGIN/../nvidia/cusparselt/lib",
                                          f"-Wl,-rpath,{libdir}"]
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        if env_flag("SPARSEKIT_PTXAS_VERBOSE"):
            nvcc.append("-Xptxas=-v")
        ext = cpp_extension.CUDAExtension(
            "sparsekit._C", srcs, define_macros=define, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs
        )
    else:
        ext = cpp_extension.CppExtension(
            "sparsekit._C", srcs, define_macros=define, extra_compile_args={"cxx": cxx}, **kwargs
        )
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    return [ext], cmdclass, [torch_pin()]


ext_modules, cmdclass, install_requires = extensions()

setup(
    version=read_version(),
    packages=find_packages(include=["sparsekit", "sparsekit.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=install_requires + ["numpy"],
)
