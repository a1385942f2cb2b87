/* ops.cu — CUDA twin of src/ops_cpu.c: the backend context, the memory
 * section of ops.h (counted device and host allocations, the scratch arena,
 * copies), dense GEMMs and the elementwise ops. fp32 storage, as the CPU
 * reference; conventions in cu_ops.h. */
#include "dsv3_cuda.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mutex>
#include <unordered_map>

#include "cu_ops.h"
#include "ops.h"

/* ---- context ---- */

namespace {
struct Ctx {
    int device = -1;
    cudaStream_t stream = nullptr;
};
Ctx ctx;
std::once_flag ctx_once;

int local_rank() {
    const char *v = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    if (!v) v = getenv("SLURM_LOCALID");
    if (!v) v = getenv("MPI_LOCALRANKID");
    return v ? atoi(v) : 0;
}

void ctx_init() {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n < 1)
        error_one_at(__FILE__, __LINE__, "CUDA backend: no usable GPU (cudaGetDeviceCount: %s, %d devices)", cudaGetErrorString(e), n);
    ctx.device = local_rank() % n;
    CU_CHECK(cudaSetDevice(ctx.device));
    /* blocking w.r.t. the legacy default stream: a plain cudaMemcpy orders after our work */
    CU_CHECK(cudaStreamCreateWithFlags(&ctx.stream, cudaStreamDefault));
}
} // namespace

extern "C" void cu_check_at(cudaError_t e, const char *what, const char *file, int line) {
    if (e != cudaSuccess) error_one_at(file, line, "CUDA error %s (%d) in %s", cudaGetErrorString(e), (int)e, what);
}
extern "C" cudaStream_t cu_stream(void) {
    std::call_once(ctx_once, ctx_init);
    return ctx.stream;
}
extern "C" int cu_device(void) {
    std::call_once(ctx_once, ctx_init);
    return ctx.device;
}

/* ---- elementwise kernels (grid-stride; one thread per element, fixed order) ---- */

namespace {
constexpr int EW = 256; /* threads per block of the elementwise kernels */

__global__ void fill_kernel(float *x, size_t n, float v) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) x[i] = v;
}
__global__ void axpy_kernel(float *y, float a, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] += a * x[i];
}
__global__ void add_kernel(float *y, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}
__global__ void scale_kernel(float *x, float a, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= a;
}
/* one block: fixed per-thread partial sums, then a fixed-shape tree (deterministic) */
__global__ void __launch_bounds__(1024) sumsq_kernel(const float *x, size_t n, double *out) {
    double s = 0.0;
    for (size_t i = threadIdx.x; i < n; i += 1024) s += (double)x[i] * x[i];
    s = dsv3::block_sum<1024>(s);
    if (threadIdx.x == 0) *out = s;
}
/* one block per row; columns strided over the block */
__global__ void copy_cols_kernel(float *dst, int ds, const float *src, int ss, int off, int n) {
    const size_t r = blockIdx.x;
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[r * ds + i] = src[r * ss + off + i];
}
__global__ void add_cols_kernel(float *dst, int ds, int off, const float *src, int ss, int n) {
    const size_t r = blockIdx.x;
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[r * ds + off + i] += src[r * ss + i];
}
} // namespace

extern "C" cudaError_t cu_zero(float *x, size_t n, cudaStream_t s) {
    return n ? cudaMemsetAsync(x, 0, n * sizeof *x, s) : cudaSuccess;
}
extern "C" cudaError_t cu_copy(float *dst, const float *src, size_t n, cudaStream_t s) {
    return n ? cudaMemcpyAsync(dst, src, n * sizeof *dst, cudaMemcpyDeviceToDevice, s) : cudaSuccess;
}
extern "C" cudaError_t cu_fill(float *x, size_t n, float v, cudaStream_t s) {
    return n ? dsv3::launch(fill_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, x, n, v) : cudaSuccess;
}
extern "C" cudaError_t cu_add(float *y, const float *x, size_t n, cudaStream_t s) {
    return n ? dsv3::launch(add_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, y, x, n) : cudaSuccess;
}
extern "C" cudaError_t cu_axpy(float *y, float a, const float *x, size_t n, cudaStream_t s) {
    return n ? dsv3::launch(axpy_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, y, a, x, n) : cudaSuccess;
}
extern "C" cudaError_t cu_scale(float *x, float a, size_t n, cudaStream_t s) {
    return n ? dsv3::launch(scale_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, x, a, n) : cudaSuccess;
}
extern "C" cudaError_t cu_sumsq(const float *x, size_t n, double *out, cudaStream_t s) {
    return dsv3::launch(sumsq_kernel, dim3(1), dim3(1024), 0, s, x, n, out);
}
extern "C" cudaError_t cu_copy_cols(float *dst, int ds, const float *src, int ss, int off, int n, int rows,
                                    cudaStream_t s) {
    if (rows <= 0 || n <= 0) return cudaSuccess;
    return dsv3::launch(copy_cols_kernel, dim3(rows), dim3(128), 0, s, dst, ds, src, ss, off, n);
}
extern "C" cudaError_t cu_add_cols(float *dst, int ds, int off, const float *src, int ss, int n, int rows,
                                   cudaStream_t s) {
    if (rows <= 0 || n <= 0) return cudaSuccess;
    return dsv3::launch(add_cols_kernel, dim3(rows), dim3(128), 0, s, dst, ds, off, src, ss, n);
}

#ifndef DSV3_CU_TWIN
/* ---- ops.h: memory section. Device memory from cudaMalloc, zeroed at
 * allocation (as the CPU backend's); sizes and categories in a host table
 * (a device block has no room for a header the host could read). ---- */

namespace {
struct MemRec {
    size_t bytes;
    int cat, host;
};
std::mutex mem_mu;
std::unordered_map<void *, MemRec> mem_tab;
int mem_cat = OPS_MEM_OTHER;
size_t mem_live[2][OPS_MEM_NCAT], mem_peak[2][OPS_MEM_NCAT], mem_live_kind[2], mem_peak_kind[2], mem_live_all,
    mem_peak_all;

void charge(void *p, size_t bytes, int host) {
    std::lock_guard<std::mutex> g(mem_mu);
    mem_tab[p] = MemRec{bytes, mem_cat, host};
    auto up = [](size_t &live, size_t &peak, size_t b) {
        live += b;
        if (live > peak) peak = live;
    };
    up(mem_live[host][mem_cat], mem_peak[host][mem_cat], bytes);
    up(mem_live_kind[host], mem_peak_kind[host], bytes);
    up(mem_live_all, mem_peak_all, bytes);
}
size_t uncharge(void *p, int host) {
    std::lock_guard<std::mutex> g(mem_mu);
    auto it = mem_tab.find(p);
    CU_REQUIRE(it != mem_tab.end() && it->second.host == host, "%s of a pointer that %s did not allocate (internal error)",
               host ? "ops_host_free" : "ops_free", host ? "ops_host_alloc" : "ops_alloc");
    MemRec r = it->second;
    mem_tab.erase(it);
    mem_live[host][r.cat] -= r.bytes;
    mem_live_kind[host] -= r.bytes;
    mem_live_all -= r.bytes;
    return r.bytes;
}
} // namespace

void *ops_alloc(size_t bytes) {
    void *p = nullptr;
    cudaStream_t s = cu_stream();
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError(); /* out of memory is an answer, not a sticky error */
        return nullptr;
    }
    CU_CHECK(cudaMemsetAsync(p, 0, bytes ? bytes : 1, s));
    CU_CHECK(cudaStreamSynchronize(s));
    charge(p, bytes, 0);
    return p;
}
void ops_free(void *p) {
    if (!p) return;
    uncharge(p, 0);
    CU_CHECK(cudaStreamSynchronize(cu_stream())); /* no kernel may still use it */
    CU_CHECK(cudaFree(p));
}
void *ops_host_alloc(size_t bytes) {
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) return nullptr;
    for (size_t i = 0; i < bytes; i += 4096) ((volatile char *)p)[i] = 0; /* committed, as the CPU backend's */
    charge(p, bytes, 1);
    return p;
}
void ops_host_free(void *p) {
    if (!p) return;
    uncharge(p, 1);
    free(p);
}
int ops_mem_category(int cat) {
    CU_REQUIRE(cat >= 0 && cat < OPS_MEM_NCAT, "ops_mem_category: %d is not a category", cat);
    std::lock_guard<std::mutex> g(mem_mu);
    int old = mem_cat;
    mem_cat = cat;
    return old;
}
void ops_mem_get(ops_mem_stats *s) {
    std::lock_guard<std::mutex> g(mem_mu);
    memset(s, 0, sizeof *s);
    for (int c = 0; c < OPS_MEM_NCAT; c++) {
        s->live[c] = (double)(mem_live[0][c] + mem_live[1][c]);
        s->peak[c] = (double)(mem_peak[0][c] + mem_peak[1][c]);
    }
    s->live_total = (double)mem_live_all;
    s->peak_total = (double)mem_peak_all;
    s->device_peak = (double)mem_peak_kind[0];
    s->host_peak = (double)mem_peak_kind[1];
}
void ops_mem_reset_peaks(void) {
    std::lock_guard<std::mutex> g(mem_mu);
    for (int k = 0; k < 2; k++) {
        for (int c = 0; c < OPS_MEM_NCAT; c++) mem_peak[k][c] = mem_live[k][c];
        mem_peak_kind[k] = mem_live_kind[k];
    }
    mem_peak_all = mem_live_all;
}
void ops_memset0(void *p, size_t bytes) {
    if (bytes) CU_CHECK(cudaMemsetAsync(p, 0, bytes, cu_stream()));
}
/* Copies are synchronous, as on the CPU: the host reads dst / reuses src at once. */
void ops_to_host(void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    CU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cu_stream()));
    CU_CHECK(cudaStreamSynchronize(cu_stream()));
}
void ops_to_device(void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    CU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cu_stream()));
    CU_CHECK(cudaStreamSynchronize(cu_stream()));
}

/* The arena: bookkeeping on the host over one device block. */
int ops_arena_create(ops_arena *a, size_t floats) {
    memset(a, 0, sizeof *a);
    size_t cap = ops_arena_round(floats);
    if (cap == 0) return 0;
    if (cudaMalloc((void **)&a->base, cap * sizeof(float)) != cudaSuccess) {
        (void)cudaGetLastError();
        a->base = nullptr;
        return -1;
    }
    a->cap = cap;
    a->owned = 1;
    return 0;
}
void ops_arena_init_at(ops_arena *a, float *mem, size_t floats) {
    CU_REQUIRE(floats % OPS_ARENA_ALIGN == 0 && (floats == 0 || mem),
               "ops_arena_init_at: %zu floats is not a multiple of %d (or no memory)", floats, OPS_ARENA_ALIGN);
    memset(a, 0, sizeof *a);
    a->base = floats ? mem : nullptr;
    a->cap = floats;
}
void ops_arena_destroy(ops_arena *a) {
    if (a->owned && a->base) {
        CU_CHECK(cudaStreamSynchronize(cu_stream()));
        CU_CHECK(cudaFree(a->base));
    }
    memset(a, 0, sizeof *a);
}
float *ops_arena_take(ops_arena *a, size_t floats) {
    size_t n = ops_arena_round(floats);
    if (n == 0) return a->base ? a->base + a->used : nullptr;
    if (n > a->cap - a->used)
        error_one_at(__FILE__, __LINE__, "scratch arena too small (internal error): need %zu floats, have %zu (capacity %zu, %zu in use)",
                  a->used + n, a->cap, a->cap, a->used);
    float *p = a->base + a->used;
    a->used += n;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}
void ops_arena_release(ops_arena *a, size_t mark) {
    CU_REQUIRE(mark <= a->used, "scratch arena: release to %zu above the %zu floats in use", mark, a->used);
    a->used = mark;
}

/* ---- ops.h: elementwise ---- */
void ops_zero(float *x, size_t n) { CU_CHECK(cu_zero(x, n, cu_stream())); }
void ops_copy(float *dst, const float *src, size_t n) { CU_CHECK(cu_copy(dst, src, n, cu_stream())); }
void ops_fill(float *x, size_t n, float v) { CU_CHECK(cu_fill(x, n, v, cu_stream())); }
void ops_add(float *y, const float *x, size_t n) { CU_CHECK(cu_add(y, x, n, cu_stream())); }
void ops_axpy(float *y, float a, const float *x, size_t n) { CU_CHECK(cu_axpy(y, a, x, n, cu_stream())); }
void ops_scale(float *x, float a, size_t n) { CU_CHECK(cu_scale(x, a, n, cu_stream())); }
double ops_sumsq(const float *x, size_t n) {
    static double *d = nullptr; /* one device scalar for the process */
    if (!d) CU_CHECK(cudaMalloc((void **)&d, sizeof *d));
    double h = 0.0;
    CU_CHECK(cu_sumsq(x, n, d, cu_stream()));
    ops_to_host(&h, d, sizeof h);
    return h;
}
void ops_copy_cols(float *dst, int ds, const float *src, int ss, int off, int n, int rows) {
    CU_CHECK(cu_copy_cols(dst, ds, src, ss, off, n, rows, cu_stream()));
}
void ops_add_cols(float *dst, int ds, int off, const float *src, int ss, int n, int rows) {
    CU_CHECK(cu_add_cols(dst, ds, off, src, ss, n, rows, cu_stream()));
}
#endif /* DSV3_CU_TWIN */
