// A CPU emulator for the CUDA kernels of csrc/cuda, for tests only (tests/test_cuda_emulated.py).
//
// Every CUDA thread of a block is a fiber (one block at a time, on one OS thread); __syncthreads,
// __syncwarp and the warp shuffles are real rendezvous: a thread runs until it reaches one and waits
// there until every thread the barrier names has arrived, so a missing barrier lets a thread run ahead
// of the writes it depends on. The fibers of a block are scheduled in a seeded random order.
// Errors the emulator reports itself (exit code 86, "EMU ERROR" on stderr): a deadlock (threads wait at
// a barrier that can never complete), a thread exiting while others wait for it at a barrier, lanes
// meeting at different warp collectives, a shuffle from a lane outside the mask, and launch errors a
// GPU would report (too much shared memory without cudaFuncSetAttribute, a grid too large).
// Dynamic shared memory is a heap buffer of exactly the launch's size, filled with 0xFF bytes (NaN as
// float / half / bfloat16) at each block start; with -fsanitize=address every access is bounds-checked
// and with -fsanitize=alignment (part of undefined) a misaligned vector load faults as on a GPU.
//
// The kernel sources are compiled unchanged except for two textual rewrites done by
// tests/cuda_emu/emu_build.py: `k<<<cfg>>>(args)` -> `::cuda_emu::launch(k, ::cuda_emu::Cfg(cfg), args)`
// and `extern __shared__ ... T name[];` -> `T* name = (T*)::cuda_emu::dynamic_smem();`.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ------------------------------------------------------------------------------------ qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static  // static __shared__ arrays: one per kernel (shared by the fibers), not poisoned
#define __constant__ static
#define __CUDACC__EMU 1

// ------------------------------------------------------------------------------------ vector types
struct __align__(16) uint4 { unsigned x, y, z, w; };
struct __align__(8) uint2 { unsigned x, y; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(8) int2 { int x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) float2 { float x, y; };
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }

// ------------------------------------------------------------------------------------ half / bfloat16
namespace cuda_emu {
inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float f32_from(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// IEEE binary16 <-> binary32, round to nearest even (what __float2half_rn does, NaN -> canonical 0x7fff).
inline uint16_t f32_to_f16_rn(float f) {
  const uint32_t u = f32_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7fffu;                      // NaN (canonical, as CUDA)
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (a >= 0x38800000u) {                                    // normal half (>= 2^-14)
    const uint32_t mant = a & 0x7fffffu;
    const uint32_t exp = (a >> 23) - 112;                    // rebias 127 -> 15
    uint32_t h = (exp << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carries into the exponent correctly
    return static_cast<uint16_t>(sign | h);
  }
  // subnormal half or zero: value = a * 2^24 in units of 2^-24
  if (a < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25: rounds to 0 (2^-25 exactly: tie to even 0)
  const uint32_t exp = a >> 23;
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  const int shift = 126 - static_cast<int>(exp);            // mant * 2^(exp-127-23) / 2^-24 = mant >> (126 - exp)
  uint32_t h = mant >> shift;
  const uint32_t rest = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return f32_from(sign | 0x7f800000u | (mant << 13));
  return f32_from(sign | ((exp + 112) << 23) | (mant << 13));
}
inline uint16_t f32_to_bf16_rn(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // NaN (canonical, as CUDA)
  const uint32_t r = u + 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(r >> 16);
}
}  // namespace cuda_emu

struct __align__(2) __half {
  uint16_t __x;
};
struct __align__(4) __half2 {
  __half x, y;
};
struct __align__(2) __nv_bfloat16 {
  uint16_t __x;
};
struct __align__(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline float __half2float(__half h) { return cuda_emu::f16_to_f32(h.__x); }
inline __half __float2half_rn(float f) { return __half{cuda_emu::f32_to_f16_rn(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline float __bfloat162float(__nv_bfloat16 b) { return cuda_emu::f32_from(static_cast<uint32_t>(b.__x) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{cuda_emu::f32_to_bf16_rn(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{__bfloat162float(h.x), __bfloat162float(h.y)}; }
// Paired subtraction, rounded once to the type (the float difference of two halves / bfloat16s is exact).
inline __half2 __hsub2(__half2 a, __half2 b) {
  return __half2{__float2half_rn(__half2float(a.x) - __half2float(b.x)), __float2half_rn(__half2float(a.y) - __half2float(b.y))};
}
inline __nv_bfloat162 __hsub2(__nv_bfloat162 a, __nv_bfloat162 b) {
  return __nv_bfloat162{__float2bfloat16_rn(__bfloat162float(a.x) - __bfloat162float(b.x)),
                        __float2bfloat16_rn(__bfloat162float(a.y) - __bfloat162float(b.y))};
}

// ------------------------------------------------------------------------------------ runtime API
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorNotSupported = 801,
};
typedef cudaError_t cudaError;
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

cudaError_t cudaGetDevice(int* dev);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void* func, int block_size, size_t smem);
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}
template <typename F>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, F* func, int block_size, size_t smem) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(n, reinterpret_cast<const void*>(func), block_size, smem);
}
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

// ------------------------------------------------------------------------------------ the emulator core
namespace cuda_emu {

struct Thread;                 // one fiber
extern Thread* g_cur;          // the running fiber
extern dim3 g_block_idx, g_block_dim, g_grid_dim;
const uint3& cur_tid();

// Knobs (environment variables, read once): EMU_SMS (multiprocessors, default 2), EMU_SMEM_OPTIN
// (shared bytes one block may opt in to, default 232448 as an H100), EMU_SMEM_PER_SM (default 233472),
// EMU_SEED (the fibers' schedule), EMU_SCHEDULE (greedy, the default | fair | forward | reverse: see
// run_block in emu_runtime.cpp).
struct Knobs {
  int sms = 2;
  int smem_optin = 232448;
  int smem_per_sm = 233472;
  int cc_major = 9;  // compute capability (major)
  unsigned seed = 1;
  int schedule = 0;  // 0 greedy, 1 forward, 2 reverse, 3 fair (random order)
};
const Knobs& knobs();

[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void set_last_error(cudaError_t e);

// Warp collectives: every lane of `mask` must reach one with the same kind and mask; the results are
// computed when the last one arrives.
enum Kind : int { kSyncwarp = 1, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll };
uint64_t warp_collective(Kind kind, unsigned mask, uint64_t value, int arg, int width, const char* what);
void sync_block(const char* what);
void* dynamic_smem();

// One launch: runs every block of the grid, one at a time, each thread a fiber calling body().
struct Cfg {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  Cfg(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr) : grid(g), block(b), smem(s), stream(st) {}
};
using Body = void (*)(void* ctx);
void run_grid(const void* kernel, const Cfg& cfg, Body body, void* ctx);

template <typename... P, typename... A>
void launch(void (*kernel)(P...), const Cfg& cfg, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  struct Ctx {
    void (*k)(P...);
    std::tuple<std::decay_t<P>...> args;
  } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  run_grid(reinterpret_cast<const void*>(kernel), cfg, [](void* c) {
    Ctx* x = static_cast<Ctx*>(c);
    std::apply(x->k, x->args);  // each thread gets its own copies of the (by-value) parameters
  }, &ctx);
}

template <typename T>
inline uint64_t to_u64(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type wider than 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
inline T from_u64(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

}  // namespace cuda_emu

#define threadIdx (::cuda_emu::cur_tid())
#define blockIdx (static_cast<const dim3&>(::cuda_emu::g_block_idx))
#define blockDim (static_cast<const dim3&>(::cuda_emu::g_block_dim))
#define gridDim (static_cast<const dim3&>(::cuda_emu::g_grid_dim))
#define warpSize 32

// ------------------------------------------------------------------------------------ device builtins
inline void __syncthreads() { cuda_emu::sync_block("__syncthreads"); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  cuda_emu::warp_collective(cuda_emu::kSyncwarp, mask, 0, 0, 32, "__syncwarp");
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return cuda_emu::from_u64<T>(cuda_emu::warp_collective(cuda_emu::kShflIdx, mask, cuda_emu::to_u64(v), src, width, "__shfl_sync"));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return cuda_emu::from_u64<T>(cuda_emu::warp_collective(cuda_emu::kShflUp, mask, cuda_emu::to_u64(v), static_cast<int>(delta), width, "__shfl_up_sync"));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return cuda_emu::from_u64<T>(cuda_emu::warp_collective(cuda_emu::kShflDown, mask, cuda_emu::to_u64(v), static_cast<int>(delta), width, "__shfl_down_sync"));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return cuda_emu::from_u64<T>(cuda_emu::warp_collective(cuda_emu::kShflXor, mask, cuda_emu::to_u64(v), lane_mask, width, "__shfl_xor_sync"));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return static_cast<unsigned>(cuda_emu::warp_collective(cuda_emu::kBallot, mask, pred != 0, 0, 32, "__ballot_sync"));
}
inline int __any_sync(unsigned mask, int pred) {
  return static_cast<int>(cuda_emu::warp_collective(cuda_emu::kAny, mask, pred != 0, 0, 32, "__any_sync"));
}
inline int __all_sync(unsigned mask, int pred) {
  return static_cast<int>(cuda_emu::warp_collective(cuda_emu::kAll, mask, pred != 0, 0, 32, "__all_sync"));
}

template <typename T>
inline T __ldg(const T* p) { return *p; }
// IEEE single operations rounded to nearest, never contracted (the driver is built without -ffp-contract=fast)
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline unsigned __float_as_uint(float v) { unsigned u; std::memcpy(&u, &v, 4); return u; }
inline float __uint_as_float(unsigned u) { float v; std::memcpy(&v, &u, 4); return v; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
// byte i of the result = byte (selector nibble i & 7) of the 8 bytes y:x (the default mode of PRMT)
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = (static_cast<uint64_t>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
  return r;
}
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __ffsll(long long v) { return __builtin_ffsll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline int __clzll(long long v) { return v == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(v)); }
inline unsigned __brev(unsigned v) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((v >> i) & 1u) << (31 - i);
  return r;
}

// Atomics: the fibers of the emulator never run concurrently, so a plain read-modify-write is atomic.
template <typename T>
inline T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }
template <typename T>
inline T atomicMin(T* p, T v) { T o = *p; if (v < o) *p = v; return o; }
template <typename T>
inline T atomicMax(T* p, T v) { T o = *p; if (v > o) *p = v; return o; }
template <typename T>
inline T atomicExch(T* p, T v) { T o = *p; *p = v; return o; }
template <typename T>
inline T atomicCAS(T* p, T cmp, T v) { T o = *p; if (o == cmp) *p = v; return o; }
template <typename T>
inline T atomicOr(T* p, T v) { T o = *p; *p = o | v; return o; }
template <typename T>
inline T atomicAnd(T* p, T v) { T o = *p; *p = o & v; return o; }
