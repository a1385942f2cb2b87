/* dsv3_cuda.cuh — included first by every .cu of the CUDA backend.
 * One source, two builds (docs: README "CUDA backend"):
 *   nvcc                   real GPU (sm_80/sm_90), `make CUDA=1`
 *   g++ -DDSV3_CUDA_EMU    CPU emulation (cuda/emu: fibers, strict barriers), `make CUDA=emu`
 * Kernels use only what both builds support (rules: README "CUDA backend"). */
#ifndef DSV3_CUDA_CUH
#define DSV3_CUDA_CUH

#if defined(DSV3_CUDA_EMU)
#include "emu/cudaemu.h"
#else
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#endif
#include <utility>

namespace dsv3 {
/* Kernel launch as a plain function call (no <<<>>> outside this header). */
#if defined(DSV3_CUDA_EMU)
using ::cudaemu::launch;
#else
template <class... P, class... A>
inline cudaError_t launch(void (*k)(P...), dim3 g, dim3 b, size_t smem, cudaStream_t s, A &&...a) {
    k<<<g, b, smem, s>>>(std::forward<A>(a)...);
    return cudaGetLastError();
}
#endif

/* Storage <-> compute conversions: bf16 storage, fp32 math. */
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

/* Grid size for a grid-stride loop over n elements (at most 65,535·… blocks is
 * never needed: the loop strides). */
inline unsigned grid_for(size_t n, unsigned block, unsigned max_blocks = 4096) {
    size_t g = (n + block - 1) / block;
    return (unsigned)(g == 0 ? 1 : (g < max_blocks ? g : max_blocks));
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over a block of BLOCK threads (a multiple of 32); every thread returns
 * the total. The order of the adds is fixed by the thread layout, so the
 * result does not depend on thread scheduling (rule 6). T: float or double. */
template <int BLOCK, typename T> __device__ T block_sum(T v) {
    static_assert(BLOCK % 32 == 0 && BLOCK <= 1024, "BLOCK must be a multiple of 32");
    __shared__ T part[BLOCK / 32];
    __shared__ T total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) part[warp] = v;
#ifndef DSV3_PLANT_MISSING_BARRIER /* the emulated suite must catch its absence (tests/it_cuda_emu.sh) */
    __syncthreads();
#endif
    if (warp == 0) {
        v = lane < BLOCK / 32 ? part[lane] : (T)0;
        v = warp_sum(v);
        if (lane == 0) total = v;
    }
    __syncthreads();
    T r = total;
    __syncthreads(); /* part/total may be reused by the caller's next block_sum */
    return r;
}
template <int BLOCK> __device__ float block_max(float v) {
    static_assert(BLOCK % 32 == 0 && BLOCK <= 1024, "BLOCK must be a multiple of 32");
    __shared__ float part[BLOCK / 32];
    __shared__ float total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < BLOCK / 32 ? part[lane] : -INFINITY;
        v = warp_max(v);
        if (lane == 0) total = v;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}

/* Inclusive prefix sum over a warp (ints: exact in any order). */
__device__ __forceinline__ int warp_scan_incl(int x) {
    const int lane = threadIdx.x & 31;
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    return x;
}
/* In-place inclusive prefix sum of a[0..n): launch ONE block of B threads, which
 * walks the array B values at a time (for the small count tables of the
 * dispatch and the sorts: O(n) work, n/B steps). */
template <int B> __global__ void __launch_bounds__(B) scan_incl_kernel(int *a, int n) {
    static_assert(B % 32 == 0 && B <= 1024, "B must be a multiple of 32");
    __shared__ int wsum[B / 32];
    const int lane = threadIdx.x & 31, wp = threadIdx.x >> 5;
    int carry = 0;
    for (int base = 0; base < n; base += B) {
        const int i = base + threadIdx.x;
        int x = warp_scan_incl(i < n ? a[i] : 0);
        if (lane == 31) wsum[wp] = x;
        __syncthreads();
        if (wp == 0) {
            const int y = warp_scan_incl(lane < B / 32 ? wsum[lane] : 0);
            if (lane < B / 32) wsum[lane] = y;
        }
        __syncthreads();
        if (i < n) a[i] = carry + x + (wp > 0 ? wsum[wp - 1] : 0);
        carry += wsum[B / 32 - 1];
        __syncthreads(); /* wsum is rewritten by the next chunk */
    }
}
} // namespace dsv3

/* Dynamic shared memory: `extern __shared__` has no C++ spelling. */
#if defined(DSV3_CUDA_EMU)
#define DSV3_DYNAMIC_SHARED(T, name) T *name = reinterpret_cast<T *>(::cudaemu::dynamic_shared())
#else
#define DSV3_DYNAMIC_SHARED(T, name) \
    extern __shared__ __align__(16) unsigned char name##_raw_[]; \
    T *name = reinterpret_cast<T *>(name##_raw_)
#endif

#endif
