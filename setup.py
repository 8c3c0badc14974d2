"""Build the optional C kernels (bitconv.accel._kernels). If they cannot be compiled, bitconv
installs anyway and uses its numpy code, which gives the same bytes (only slower)."""
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # no compiler, no Cython: numpy fallback
            print(f"warning: bitconv's C kernels were not built ({e}); using numpy")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:
            if "-fopenmp" in ext.extra_compile_args:  # e.g. Apple clang: build it single-threaded
                print(f"warning: {ext.name} failed to build with OpenMP ({e}); retrying without")
                ext.extra_compile_args = [a for a in ext.extra_compile_args if a != "-fopenmp"]
                ext.extra_link_args = [a for a in ext.extra_link_args if a != "-fopenmp"]
                self.build_extension(ext)
                return
            print(f"warning: {ext.name} was not built ({e}); using numpy")


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    # Portable -O3 baseline; SIMD paths are compiled with target attributes and chosen at run time.
    flags = ["-O3", "-fno-fast-math", "-ffp-contract=off"]
    ext = Extension("bitconv.accel._kernels", ["bitconv/accel/_kernels.pyx"],
                    extra_compile_args=list(flags))
    # The reference ternary matmul runs rows in parallel (prange); its generated C guards every
    # OpenMP pragma with #ifdef _OPENMP, so the same source builds without -fopenmp.
    ternary = Extension("bitconv.accel._ternary", ["bitconv/accel/_ternary.pyx"],
                        extra_compile_args=flags + ["-fopenmp"], extra_link_args=["-fopenmp"])
    return cythonize([ext, ternary], language_level=3, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
