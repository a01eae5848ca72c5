// One warp per output column n (weight row n = block row n / R, row r = n % R inside its blocks) and
// tile of up to kTileM activation rows. The lanes share out the (block, c) pairs of the block row
// flattened, so that any C keeps all 32 lanes busy and consecutive lanes read consecutive values of a
// block row and consecutive columns of x; float32 accumulation in registers, a warp reduction, no
// atomics. x is read through the caches (L1/L2), not staged.
//
// Float16 / bfloat16 with R % 16 == 0 and C % 16 == 0 on sm_80+ take the tensor-core decode kernel instead
// (mma_decode.cuh with BsrRows: each row group's stored blocks streamed with 16-byte loads straight into
// m16n8k16 A fragments, x staged in shared memory; where x's rows do not fit, K is split into chunks of a
// multiple of lcm(64, C) columns and finish_kernel adds the partial sums); the simple kernel serves the rest
// (float32, below sm_80, a block so wide that one chunk does not fit), and every case under
// SPARSEKIT_CUDA_DECODE=v1.
#include "cuda/bsr_kernel.cuh"

#include <numeric>

#include "cuda/mma_decode.cuh"

namespace sparsekit {
namespace cuda {
namespace {

using namespace decode;

constexpr int kTileM = 8;
constexpr int kWarpsPerBlock = 4;

struct BsrParams {
  int64_t M = 0, N = 0, K = 0;
  int64_t m_begin = 0;
  int R = 1, C = 1;
  const int32_t* crow = nullptr;
  const int32_t* col = nullptr;
  const void* values = nullptr;
  const void* x = nullptr;
  int64_t ldx = 0;
  const void* bias = nullptr;
  void* y = nullptr;
  int64_t ldy = 0;
};

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) bsr_mm_kernel(const BsrParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t m0 = p.m_begin + static_cast<int64_t>(blockIdx.y) * kTileM;
  if (n >= p.N) return;  // the whole warp
  const int mt = static_cast<int>(imin<int64_t>(kTileM, p.M - m0));
  const int64_t br = n / p.R;
  const int r = static_cast<int>(n - br * p.R);
  const int64_t b0 = p.crow[br];
  const int64_t b1 = p.crow[br + 1];
  const unsigned C = static_cast<unsigned>(p.C);
  const unsigned count = static_cast<unsigned>((b1 - b0) * p.C);  // <= K < 2**31 for a valid BSR
  const T* vals = static_cast<const T*>(p.values);
  const T* x = static_cast<const T*>(p.x) + m0 * p.ldx;
  const int64_t block_elems = static_cast<int64_t>(p.R) * p.C;

  float acc[kTileM];
#pragma unroll
  for (int i = 0; i < kTileM; ++i) acc[i] = 0.f;
  for (unsigned i = lane; i < count; i += 32) {
    const unsigned bi = i / C;
    const unsigned c = i - bi * C;
    const int64_t b = b0 + bi;
    const float v = to_f(vals[b * block_elems + static_cast<int64_t>(r) * p.C + c]);
    const int64_t k = static_cast<int64_t>(p.col[b]) * p.C + c;
#pragma unroll
    for (int m = 0; m < kTileM; ++m)
      if (m < mt) acc[m] = fmaf(v, to_f(x[m * p.ldx + k]), acc[m]);
  }
  const float s = warp_reduce_scatter<kTileM>(acc, lane);
  const int m = reduce_scatter_row<kTileM>(lane);
  if (reduce_scatter_writer<kTileM>(lane) && m < mt) {
    float out = s;
    if (p.bias) out += to_f(static_cast<const T*>(p.bias)[n]);
    static_cast<T*>(p.y)[(m0 + m) * p.ldy + n] = from_f<T>(out);
  }
}

template <typename T>
cudaError_t launch(const BsrMmLaunch& a, cudaStream_t stream) {
  if (a.M == 0 || a.N == 0) return cudaSuccess;
  if (a.R <= 0 || a.C <= 0 || a.N % a.R || a.K % a.C || a.K > 2147483647LL || a.R > 2147483647LL)
    return cudaErrorInvalidValue;
  BsrParams p;
  p.M = a.M; p.N = a.N; p.K = a.K;
  p.R = static_cast<int>(a.R); p.C = static_cast<int>(a.C);
  p.crow = a.crow; p.col = a.col; p.values = a.values;
  p.x = a.x; p.ldx = a.ldx; p.bias = a.bias; p.y = a.y; p.ldy = a.ldy;
  const int64_t blocks_n = ceil_div<int64_t>(a.N, kWarpsPerBlock);
  const int64_t tiles = ceil_div<int64_t>(a.M, kTileM);
  if (blocks_n > 2147483647LL) return cudaErrorInvalidConfiguration;
  for (int64_t t = 0; t < tiles; t += 65535) {
    const int64_t ty = imin<int64_t>(tiles - t, 65535);
    p.m_begin = t * kTileM;
    const dim3 grid(static_cast<unsigned>(blocks_n), static_cast<unsigned>(ty));
    bsr_mm_kernel<T><<<grid, kWarpsPerBlock * 32, 0, stream>>>(p);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

// The tensor-core path (mma_decode.cuh, BsrRows) through the decode Driver.
struct BsrDecode {
  using Launch = BsrMmLaunch;

  static bool valid(const Launch& a) {
    return a.dtype != DType::f32 && a.R > 0 && a.C > 0 && a.R % 16 == 0 && a.C % 16 == 0 && a.N % a.R == 0 &&
           a.K % a.C == 0 && a.K <= 2147483647LL - 2 * mma::kStepCols;
  }

  // On sm_80+, K in chunks of whole blocks (a multiple of lcm(64, C) columns) when x's rows do not fit whole;
  // else cudaErrorNotSupported (the simple kernel serves the call)
  template <typename T>
  static cudaError_t make_plan(const Launch& a, const DevInfo& d, Plan* plan) {
    if constexpr (std::is_same_v<T, float>) {
      return cudaErrorNotSupported;
    } else {
      if (d.cc_major < 8) return cudaErrorNotSupported;
      Plan p;
      const int64_t align = std::lcm<int64_t>(mma::kStepCols, a.C);
      p.ch = mma::chunking<mma::BsrRows, mma::HalfX<T>>(a.M, a.K, d, align);
      const int64_t limit = imin<int64_t>(d.smem_optin, d.smem_per_sm - 1024);
      if (static_cast<int64_t>(p.ch.smem) > limit) return cudaErrorNotSupported;  // one chunk of blocks too wide
      p.vec = reinterpret_cast<uintptr_t>(a.values) % 16 == 0;
      plan_workspace(&p, a.M, a.N);
      *plan = p;
      return cudaSuccess;
    }
  }

  template <typename T, int MT, bool kVec>
  static cudaError_t launch_tiles(const Launch& a, const Plan& plan, const DevInfo& d, const Output& out,
                                  int64_t m_begin, int64_t tiles, cudaStream_t stream) {
    if constexpr (std::is_same_v<T, float>) {
      return cudaErrorNotSupported;
    } else {
      mma::Params p;
      p.M = a.M; p.N = a.N; p.K = a.K;
      p.w = a.values; p.crow = a.crow; p.col = a.col; p.R = a.R; p.C = a.C;
      p.x = a.x; p.ldx = a.ldx;
      p.out = out;
      return mma::launch<mma::BsrRows, mma::HalfX<T>, MT, kVec>(p, plan, d, m_begin, tiles, stream);
    }
  }

  template <typename T>
  static cudaError_t finish(const Launch&, const Output& out, int splits, cudaStream_t stream) {
    return launch_finish<T>(out, splits, stream);
  }
};

}  // namespace

// The test bsr_mm makes through Driver<BsrDecode>::run's plan.
bool bsr_mm_uses_tensor_cores(const BsrMmLaunch& a) {
  if (decode_variant() == 1 || !BsrDecode::valid(a) || a.M <= 0 || a.N <= 0 || a.K <= 0) return false;
  DevInfo d;
  if (dev_info(&d) != cudaSuccess) return false;
  Plan plan;
  const cudaError_t e = a.dtype == DType::f16 ? BsrDecode::make_plan<__half>(a, d, &plan)
                                              : BsrDecode::make_plan<__nv_bfloat16>(a, d, &plan);
  return e == cudaSuccess;
}

size_t bsr_mm_workspace_bytes(const BsrMmLaunch& a, cudaError_t* err) {
  if (err) *err = cudaSuccess;
  if (decode_variant() == 1 || !BsrDecode::valid(a)) return 0;
  cudaError_t e = cudaSuccess;
  const size_t bytes = Driver<BsrDecode>::workspace_bytes(a, &e);
  if (e == cudaErrorNotSupported) return 0;  // the simple kernel: no workspace
  if (err) *err = e;
  return e == cudaSuccess ? bytes : 0;
}

cudaError_t bsr_mm(const BsrMmLaunch& a, void* workspace, cudaStream_t stream) {
  // the tensor-core path plans first and answers cudaErrorNotSupported, having launched nothing, where it does
  // not apply (float32, below sm_80, a chunk of blocks too wide): the simple kernel then (one plan per call, no
  // second test)
  if (decode_variant() != 1 && BsrDecode::valid(a)) {
    const cudaError_t e = Driver<BsrDecode>::run(a, workspace, stream);
    if (e != cudaErrorNotSupported) return e;
  }
  switch (a.dtype) {
    case DType::f32: return launch<float>(a, stream);
    case DType::f16: return launch<__half>(a, stream);
    case DType::bf16: return launch<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace sparsekit
