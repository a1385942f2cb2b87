/* fuzz_safetensors — libFuzzer harness of the safetensors reader: st_open_mem
 * on the input, then (when it validates) st_read of every tensor into a
 * bounded buffer, in chunks, plus reads that must be refused. Built by
 * `make build/fuzz/fuzz_safetensors` (clang -fsanitize=fuzzer,address,undefined;
 * src/safetensors.c and jansson only, no MPI). Seeds: tests/fuzz/safetensors/. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    st_file f;
    char err[512];
    if (st_open_mem(&f, data, size, "fuzz", err, sizeof err)) {
        if (!memchr(err, 0, sizeof err) || strchr(err, '\n')) abort(); /* one terminated line */
        return 0;
    }
    static unsigned char buf[4096];
    uint64_t total = 0;
    for (int i = 0; i < f.n; i++) {
        const st_tensor *t = &f.t[i];
        uint64_t nb = st_bytes(t);
        if (t->end > size || st_find(&f, t->name) < 0) abort();
        total += nb;
        for (uint64_t off = 0; off < nb; off += sizeof buf) {
            uint64_t len = nb - off < sizeof buf ? nb - off : sizeof buf;
            if (st_read(&f, i, off, len, buf, err, sizeof err)) abort();
        }
        if (st_read(&f, i, nb, 1, buf, err, sizeof err) == 0) abort();
        if (st_read(&f, i, 1, UINT64_MAX, buf, err, sizeof err) == 0) abort();
        (void)st_numel(t);
    }
    if (f.data_start + total != size) abort(); /* every byte covered exactly once */
    for (int i = 0; i < f.n_meta; i++)
        if (st_meta(&f, f.meta_key[i]) == NULL) abort();
    st_close(&f);
    return 0;
}
