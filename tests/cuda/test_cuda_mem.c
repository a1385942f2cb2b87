/* test_cuda_mem.c — the memory section of ops.h on the CUDA backend (cuda/ops.cu):
 * counted device and host allocations by category, peaks, zeroing, copies,
 * the scratch arena and its bounds. These functions cannot sit beside the
 * CPU's in one binary, so this test links the full cuda objects (cuda.mk)
 * and checks the contract of ops.h directly (exact byte counts, values). */
#include <sys/wait.h>
#include <unistd.h>

#include "cu_ops.h"
#include "twin.h"

static void check(int ok, const char *op, const char *what) { twin_report(ok, op, what, ok ? 0.0 : 1.0); }
static int is_device(const void *p) {
    struct cudaPointerAttributes a;
    return cudaPointerGetAttributes(&a, p) == cudaSuccess && a.type == cudaMemoryTypeDevice;
}
static double live(int cat) {
    ops_mem_stats s;
    ops_mem_get(&s);
    return s.live[cat];
}
static int all_zero(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i]) return 0;
    return 1;
}

static void allocations(void) {
    ops_mem_stats s0, s;
    ops_mem_get(&s0);
    int old = ops_mem_category(OPS_MEM_PARAMS);
    check(old == OPS_MEM_OTHER, "ops_mem_category", "starts at OPS_MEM_OTHER; returns the previous category");
    float *a = ops_alloc(4000);
    ops_mem_category(OPS_MEM_GRADS);
    float *b = ops_alloc(1000), *z = ops_alloc(0);
    ops_mem_category(OPS_MEM_OTHER);
    ops_mem_get(&s);
    check(a && b && z, "ops_alloc", "4000, 1000 and 0 bytes: non-NULL");
    check(s.live[OPS_MEM_PARAMS] - s0.live[OPS_MEM_PARAMS] == 4000 && s.live[OPS_MEM_GRADS] - s0.live[OPS_MEM_GRADS] == 1000 &&
              s.live_total - s0.live_total == 5000 && s.device_peak >= 5000 && s.host_peak == s0.host_peak,
          "ops_alloc", "charged to the current category, device kind, exact bytes");
    check(is_device(a), "ops_alloc", "device memory (a kernel may take it)");
    unsigned char *h = malloc(4000);
    memset(h, 0xAB, 4000);
    ops_to_host(h, a, 4000);
    check(all_zero(h, 4000), "ops_alloc", "zeroed");
    twin_fold(h, 4000);

    /* copies round-trip; memset0 of a sub-range; results read after ops_to_host's synchronisation */
    float *src = twin_host(1000, 61, -1, 1), *back = malloc(1000 * sizeof *back);
    ops_to_device(a, src, 1000 * sizeof *src);
    ops_to_host(back, a, 1000 * sizeof *back);
    twin_same("ops_to_device", "1000 floats, back with ops_to_host", back, src, 1000 * sizeof *src);
    twin_same("ops_to_host", "1000 floats", back, src, 1000 * sizeof *src);
    ops_memset0(a + 100, 300 * sizeof *a);
    ops_to_host(back, a, 1000 * sizeof *back);
    memset(src + 100, 0, 300 * sizeof *src);
    twin_same("ops_memset0", "floats [100, 400) of 1000", back, src, 1000 * sizeof *src);
    ops_memset0(a, 0); /* 0 bytes: a no-op */
    ops_to_host(back, a, 1000 * sizeof *back);
    twin_same("ops_memset0", "0 bytes: nothing changes", back, src, 1000 * sizeof *src);
    /* device to device bytes at odd offsets (bf16 pieces of a ZeRO gather start anywhere) */
    ops_to_device(a, src, 1000 * sizeof *src);
    ops_copy_bytes((char *)a + 2001, (const char *)a + 3, 1001);
    ops_to_host(back, a, 1000 * sizeof *back);
    memcpy((char *)src + 2001, (const char *)src + 3, 1001);
    twin_same("ops_copy_bytes", "1001 bytes, odd offsets", back, src, 1000 * sizeof *src);
    ops_copy_bytes(a, a + 500, 0); /* 0 bytes: a no-op */
    ops_to_host(back, a, 1000 * sizeof *back);
    twin_same("ops_copy_bytes", "0 bytes: nothing changes", back, src, 1000 * sizeof *src);

    double peak_before = s.peak[OPS_MEM_PARAMS];
    ops_free(a);
    ops_free(NULL);
    ops_mem_get(&s);
    check(s.live[OPS_MEM_PARAMS] == s0.live[OPS_MEM_PARAMS] && s.peak[OPS_MEM_PARAMS] == peak_before,
          "ops_free", "uncharges its category; the peak stays; NULL is a no-op");
    ops_mem_reset_peaks();
    ops_mem_get(&s);
    check(s.peak[OPS_MEM_PARAMS] == s.live[OPS_MEM_PARAMS] && s.peak_total == s.live_total &&
              s.device_peak == s.live_total - (s.host_peak),
          "ops_mem_reset_peaks", "peaks := live");
    check(live(OPS_MEM_GRADS) - s0.live[OPS_MEM_GRADS] == 1000, "ops_mem_get", "live by category");
    ops_free(b);
    ops_free(z);
    check(live(OPS_MEM_GRADS) == s0.live[OPS_MEM_GRADS], "ops_free", "1000 and 0 bytes");

    /* host memory: zeroed, counted as host, the host may write it */
    ops_mem_category(OPS_MEM_ACTS);
    int *hc = ops_host_alloc(64 * sizeof *hc);
    ops_mem_category(OPS_MEM_OTHER);
    ops_mem_get(&s);
    check(hc && all_zero(hc, 64 * sizeof *hc) && s.live[OPS_MEM_ACTS] - s0.live[OPS_MEM_ACTS] == 256 &&
              s.host_peak >= 256,
          "ops_host_alloc", "zeroed, charged to the category, host kind");
    for (int i = 0; i < 64; i++) hc[i] = i;
    ops_host_free(hc);
    ops_host_free(NULL);
    /* memory allocated elsewhere (the node-shared store): host kind, its category, peaks */
    ops_mem_stats c0;
    ops_mem_get(&c0);
    ops_mem_count(OPS_MEM_PARAMS, 5000, +1);
    ops_mem_get(&s);
    int up = s.live[OPS_MEM_PARAMS] - c0.live[OPS_MEM_PARAMS] == 5000 && s.live_total - c0.live_total == 5000 &&
             s.host_peak >= c0.host_peak && s.peak_total >= c0.live_total + 5000;
    ops_mem_count(OPS_MEM_PARAMS, 5000, -1);
    ops_mem_get(&s);
    check(up && s.live[OPS_MEM_PARAMS] == c0.live[OPS_MEM_PARAMS] && s.live_total == c0.live_total, "ops_mem_count",
          "+5000 then -5000 bytes of params (host kind)");
    check(live(OPS_MEM_ACTS) == s0.live[OPS_MEM_ACTS], "ops_host_free", "uncharged; NULL is a no-op");
    free(h), free(src), free(back);
}

/* a take past the capacity ends the job with one message (a forked child must die with it) */
static int dies_with(void (*fn)(void), const char *msg) {
    int fd[2];
    if (pipe(fd)) return 0;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 2);
        close(fd[0]);
        fn();
        _exit(0);
    }
    close(fd[1]);
    char buf[4096] = {0};
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(fd[0], buf + n, sizeof buf - 1 - n)) > 0) n += (size_t)r;
    close(fd[0]);
    int st;
    waitpid(pid, &st, 0);
    return !(WIFEXITED(st) && WEXITSTATUS(st) == 0) && strstr(buf, msg) != NULL;
}
static void overflow(void) {
    ops_arena a;
    ops_arena_create(&a, 100);
    ops_arena_take(&a, 100);
    ops_arena_take(&a, 20);
}
static void bad_release(void) {
    ops_arena a;
    ops_arena_create(&a, 100);
    ops_arena_take(&a, 10);
    ops_arena_release(&a, 64);
}

static void arena(void) {
    ops_arena a;
    ops_mem_stats s0, s;
    ops_mem_get(&s0);
    check(ops_arena_create(&a, 100) == 0 && a.base && a.cap == 112 && a.used == 0 && a.owned, "ops_arena_create",
          "100 floats: capacity rounded to 112");
    check(is_device(a.base), "ops_arena_create", "device memory");
    float *p = ops_arena_take(&a, 10);
    size_t mark = ops_arena_mark(&a);
    float *q = ops_arena_take(&a, 20), *e = ops_arena_take(&a, 0);
    check(p == a.base && q == a.base + 16 && e == a.base + 48 && a.used == 48 && a.peak == 48, "ops_arena_take",
          "takes rounded to 16 floats, in order; 0 floats: the current top");
    ops_arena_release(&a, mark);
    check(a.used == 16 && a.peak == 48 && ops_arena_take(&a, 96) == a.base + 16 && a.used == 112, "ops_arena_release",
          "back to the mark; the peak stays; the space is reused up to the capacity");
    /* the arena's memory works for kernels: fill through the backend, read back */
    ops_fill(p, 10, 2.5f);
    float h[10], want[10];
    ops_to_host(h, p, sizeof h);
    for (int i = 0; i < 10; i++) want[i] = 2.5f;
    twin_same("ops_arena_take", "memory usable by ops (ops_fill, read back)", h, want, sizeof h);
    ops_arena_destroy(&a);
    check(a.base == NULL && a.cap == 0 && a.used == 0, "ops_arena_destroy", "owned arena freed and zeroed");
    ops_mem_get(&s);
    check(s.live_total == s0.live_total, "ops_arena_create", "not in the ops_alloc accounting (as the CPU backend's)");
    check(ops_arena_create(&a, 0) == 0 && a.base == NULL && a.cap == 0 && ops_arena_take(&a, 0) == NULL,
          "ops_arena_create", "0 floats: an empty arena (takes of 0 only)");
    ops_arena_destroy(&a);

    /* an arena over a region the caller owns: destroy frees nothing */
    float *region = ops_alloc(64 * sizeof(float));
    ops_arena_init_at(&a, region, 32);
    check(a.base == region && a.cap == 32 && !a.owned && ops_arena_take(&a, 17) == region && a.used == 32,
          "ops_arena_init_at", "32 floats over a caller's region");
    ops_arena_destroy(&a);
    ops_memset0(region, 64 * sizeof(float)); /* still allocated: the backend may use it */
    ops_to_host(h, region, sizeof h);
    check(all_zero(h, sizeof h), "ops_arena_destroy", "an init_at arena frees nothing");
    ops_free(region);

    check(dies_with(overflow, "scratch arena too small"), "ops_arena_take",
          "past the capacity: the job ends with a message");
    check(dies_with(bad_release, "scratch arena: release to 64 above the 16 floats in use"), "ops_arena_release",
          "above the floats in use: the job ends with a message");
}

/* ops_sync: work queued on the backend stream (a copy into pinned memory, which the
 * host may read without another synchronisation) is done when it returns */
static void queued_then_sync(void) {
    float *pinned, *d = ops_alloc(256 * sizeof(float)), want[256];
    CK(cudaMallocHost((void **)&pinned, 256 * sizeof(float)));
    for (int i = 0; i < 256; i++) pinned[i] = -1.0f, want[i] = 0.75f;
    ops_fill(d, 256, 0.75f);
    CK(cudaMemcpyAsync(pinned, d, 256 * sizeof(float), cudaMemcpyDeviceToHost, cu_stream()));
    ops_sync();
    twin_same("ops_sync", "queued fill + copy to pinned memory are done", pinned, want, sizeof want);
    CK(cudaFreeHost(pinned));
    ops_free(d);
}

/* ops_weight_store_rows stages host rows through a transient device buffer: counted as OPS_MEM_OTHER while it
 * lives (the peak grows by its bytes), given back after (live unchanged); the weight itself is the caller's */
static void store_staging(void) {
    const int out = 300, in = 130; /* FP8: 3 row blocks, the last one partial */
    ops_weight w = {OPS_FP8_E4M3, ops_alloc((size_t)out * in), NULL, out, in};
    float *scale = ops_alloc((size_t)3 * 2 * sizeof(float));
    w.scale = scale;
    float *src = twin_host((size_t)out * in, 9, -3, 3);
    ops_mem_stats s0, s;
    ops_mem_reset_peaks();
    ops_mem_get(&s0);
    ops_weight_store_rows(&w, 0, out, src);
    ops_sync();
    ops_mem_get(&s);
    check(s.peak[OPS_MEM_OTHER] - s0.live[OPS_MEM_OTHER] == (double)out * in * sizeof(float) &&
              s.live[OPS_MEM_OTHER] == s0.live[OPS_MEM_OTHER],
          "ops_weight_store_rows", "staging counted as OPS_MEM_OTHER while it lives");
    ops_free(w.data), ops_free(scale), free(src);
}

int main(void) {
    twin_init();
    queued_then_sync();
    allocations();
    store_staging();
    arena();
    return twin_end();
}
