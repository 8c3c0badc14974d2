// Drive a bitnet.cpp build (its libllama) on a GGUF: decode a prompt of token ids with all logits,
// then greedy-generate N tokens.  Used to check bitconv's i2_s / tl2 files against bitnet.cpp's own.
//
// Usage: bitnet_run <model.gguf> <id,id,...> <n_gen> <logits_out.f32> [n_threads=1] [n_ubatch=512]
//   Prints the generated ids on stdout ("tokens: a b c ...").  logits_out gets float32 rows of
//   n_vocab: one per prompt position, then one per generated step (the logits the token was
//   picked from).  With n_ubatch=1 the prompt is still one llama_decode call; ggml splits it.
//   (TL2 kernels are only correct at n_ubatch=1.)
// Build (see README.md): g++ -O2 -std=c++17 bitnet_run.cpp -I<BitNet>/3rdparty/llama.cpp/include \
//   -I<BitNet>/3rdparty/llama.cpp/ggml/include -L<build>/3rdparty/llama.cpp/src -lllama \
//   -Wl,-rpath,<build>/3rdparty/llama.cpp/src:<build>/3rdparty/llama.cpp/ggml/src -o bitnet_run
#include "llama.h"
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char ** argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s model.gguf id,id,... n_gen logits.f32 [n_threads] [n_ubatch]\n", argv[0]);
        return 2;
    }
    std::vector<llama_token> prompt;
    {
        std::stringstream ss(argv[2]);
        std::string item;
        while (std::getline(ss, item, ',')) prompt.push_back((llama_token) atoi(item.c_str()));
    }
    const int n_gen = atoi(argv[3]);
    const int n_threads = argc > 5 ? atoi(argv[5]) : 1;
    const int n_ubatch = argc > 6 ? atoi(argv[6]) : 512;

    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_load_model_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "load failed\n"); return 1; }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 256;
    cp.n_batch = 256;
    cp.n_ubatch = n_ubatch;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    llama_context * ctx = llama_new_context_with_model(model, cp);
    if (!ctx) { fprintf(stderr, "context failed\n"); return 1; }
    const int n_vocab = llama_n_vocab(model);

    FILE * fo = fopen(argv[4], "wb");
    llama_batch batch = llama_batch_init(256, 0, 1);
    batch.n_tokens = 0;
    for (size_t i = 0; i < prompt.size(); ++i) {
        batch.token[i] = prompt[i];
        batch.pos[i] = (llama_pos) i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
        batch.n_tokens++;
    }
    if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
    for (int i = 0; i < batch.n_tokens; ++i) fwrite(llama_get_logits_ith(ctx, i), sizeof(float), n_vocab, fo);

    std::vector<llama_token> out;
    int pos = (int) prompt.size();
    const float * last = llama_get_logits_ith(ctx, batch.n_tokens - 1);
    for (int g = 0; g < n_gen; ++g) {
        int best = 0;
        for (int v = 1; v < n_vocab; ++v) if (last[v] > last[best]) best = v;
        out.push_back(best);
        if (g + 1 == n_gen) break;
        batch.n_tokens = 1;
        batch.token[0] = best;
        batch.pos[0] = pos++;
        batch.n_seq_id[0] = 1;
        batch.seq_id[0][0] = 0;
        batch.logits[0] = 1;
        if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
        last = llama_get_logits_ith(ctx, 0);
        fwrite(last, sizeof(float), n_vocab, fo);
    }
    fclose(fo);
    printf("tokens:");
    for (llama_token t : out) printf(" %d", t);
    printf("\n");
    llama_batch_free(batch);
    llama_free(ctx);
    llama_free_model(model);
    return 0;
}
