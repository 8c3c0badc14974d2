// Pack a float32 matrix with bitnet.cpp's own I2_S quantizer (the reference for bitconv's i2_s bytes).
// Usage: i2s_quant <in.f32> <M> <K> <out.bin>
//   in.f32: M*K little-endian float32, row-major (K contiguous). out.bin: M*K/4 + 32 bytes.
// One ggml_quantize_chunk call over all rows = what `llama-quantize ... I2_S 1` does per tensor
// (more threads split the rows and each chunk writes its own scale, corrupting them).
// The output buffer is zeroed first, so the 28 bytes after the scale are zeros here.
// Build: g++ -O1 -std=c++17 i2s_quant.cpp -I<BitNet>/3rdparty/llama.cpp/ggml/include \
//          -L<build>/3rdparty/llama.cpp/ggml/src -lggml -Wl,-rpath,<build>/3rdparty/llama.cpp/ggml/src
#include "ggml.h"
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char ** argv) {
    if (argc != 5) { fprintf(stderr, "usage: %s in.f32 M K out.bin\n", argv[0]); return 2; }
    const long M = atol(argv[2]), K = atol(argv[3]);
    std::vector<float> src(M * K);
    FILE * f = fopen(argv[1], "rb");
    if (!f || fread(src.data(), sizeof(float), src.size(), f) != src.size()) { fprintf(stderr, "read failed\n"); return 1; }
    fclose(f);
    const size_t nbytes = (size_t)(M * K / 4 + 32);
    std::vector<unsigned char> dst(nbytes + 4096, 0);  // slack: the quantizer's bookkeeping is by row size
    size_t got = ggml_quantize_chunk(GGML_TYPE_I2_S, src.data(), dst.data(), 0, M, K, nullptr);
    if (got != nbytes) { fprintf(stderr, "unexpected size %zu (want %zu)\n", got, nbytes); return 1; }
    for (size_t i = nbytes; i < dst.size(); ++i) if (dst[i]) { fprintf(stderr, "wrote past nbytes\n"); return 1; }
    f = fopen(argv[4], "wb");
    fwrite(dst.data(), 1, nbytes, f);
    fclose(f);
    return 0;
}
