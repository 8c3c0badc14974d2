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
            print(f"warning: {ext.name} was not built ({e}); using numpy")


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    # Portable -O3 baseline; SIMD paths are compiled with target attributes and chosen at run time.
    ext = Extension("bitconv.accel._kernels", ["bitconv/accel/_kernels.pyx"],
                    extra_compile_args=["-O3", "-fno-fast-math", "-ffp-contract=off"])
    return cythonize([ext], language_level=3, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
