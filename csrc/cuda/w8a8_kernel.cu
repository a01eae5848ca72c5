// W8A8 x dense or 2:4 for small M (decode), on the tensor cores: the shared tensor-core decode kernel of
// mma_decode.cuh with int8 activations (Int8X: m16n8k32, exact int32 sums, the reference's epilogue) and int8
// rows (int8_mm) or 2:4 int8 rows (S24Int8Rows: each group's two bytes placed at their columns by one byte
// permute). Split-K partials are int32, added exactly by w8a8_finish_kernel. With `quantize` (the one-call
// linears): QuantX quantizes x per token while staging it, or quantize_rows_kernel runs first (see w8a8_mm).
#include "cuda/w8a8_kernel.cuh"

#include "cuda/mma_decode.cuh"

namespace sparsekit {
namespace cuda {
namespace {

using namespace decode;

struct W8A8Decode {
  using Launch = W8A8MmLaunch;
  static constexpr bool kWideTile = true;  // int8 x: M > 16 in tiles of 32 (mma::tile_rows_for; QuantX stays at 16)

  static bool valid(const Launch& a) { return a.meta == nullptr || a.K % 4 == 0; }

  template <typename T, typename X>
  static Plan plan_for(const Launch& a, const DevInfo& d) {
    Plan p;
    if (a.meta) {
      mma::plan_chunks<mma::S24Int8Rows, X>(&p, a.M, a.K, d);
      p.vec = a.K % 16 == 0 && reinterpret_cast<uintptr_t>(a.w) % 8 == 0 && reinterpret_cast<uintptr_t>(a.meta) % 2 == 0;
    } else {
      mma::plan_chunks<mma::Int8Rows, X>(&p, a.M, a.K, d);
      p.vec = a.K % 16 == 0 && reinterpret_cast<uintptr_t>(a.w) % 16 == 0;
    }
    plan_workspace(&p, a.M, a.N);
    if (X::kQuant && p.ch.splits > 1) p.ws_bytes += static_cast<size_t>(p.ws_rows) * sizeof(float);  // the scales
    return p;
  }

  template <typename T>
  static cudaError_t make_plan(const Launch& a, const DevInfo& d, Plan* plan) {
    if (d.cc_major < 8) return cudaErrorInvalidDeviceFunction;
    if (a.quantize) {  // fused: float16 / bfloat16 x only (w8a8_mm quantizes float32 x first)
      if constexpr (std::is_same_v<T, float>) {
        return cudaErrorInvalidValue;
      } else {
        *plan = plan_for<T, mma::QuantX<T>>(a, d);
        return cudaSuccess;
      }
    }
    *plan = plan_for<T, mma::Int8X<T>>(a, d);
    return cudaSuccess;
  }

  template <typename X, int MT, bool kVec>
  static cudaError_t launch_x(const Launch& a, const Plan& plan, const DevInfo& d, const Output& out,
                              int64_t m_begin, int64_t tiles, cudaStream_t stream) {
    mma::Params p;
    p.M = a.M; p.N = a.N; p.K = a.K;
    p.w = a.w; p.meta = a.meta; p.scale = a.w_scale; p.x_scale = a.x_scale; p.x = a.x; p.ldx = a.ldx;
    p.out = out;
    if (a.meta) return mma::launch<mma::S24Int8Rows, X, MT, kVec>(p, plan, d, m_begin, tiles, stream);
    return mma::launch<mma::Int8Rows, X, MT, kVec>(p, plan, d, m_begin, tiles, stream);
  }

  template <typename T, int MT, bool kVec>
  static cudaError_t launch_tiles(const Launch& a, const Plan& plan, const DevInfo& d, const Output& out,
                                  int64_t m_begin, int64_t tiles, cudaStream_t stream) {
    if constexpr (!std::is_same_v<T, float>) {
      if constexpr (MT <= 16) {
        if (a.quantize) return launch_x<mma::QuantX<T>, MT, kVec>(a, plan, d, out, m_begin, tiles, stream);
      } else {
        if (a.quantize) return cudaErrorInvalidValue;  // (its plan's tiles are 16 rows)
      }
    }
    return launch_x<mma::Int8X<T>, MT, kVec>(a, plan, d, out, m_begin, tiles, stream);
  }

  template <typename T>
  static cudaError_t finish(const Launch& a, const Output& out, int splits, cudaStream_t stream) {
    if (a.quantize) return mma::launch_w8a8_finish<T>(out, splits, mma::split_x_scales(out, splits), out.ws_m0,
                                                      a.w_scale, stream);
    return mma::launch_w8a8_finish<T>(out, splits, a.x_scale, 0, a.w_scale, stream);
  }
};

// Per-token quantization as a kernel of its own (the rows too long to fuse, or float32 x): a block per row
// at a time, max |x| over the row, then the row quantized into q (M, K) contiguous and its scale.
template <typename T>
__global__ void __launch_bounds__(256) quantize_rows_kernel(const T* x, int64_t ldx, int64_t M, int64_t K,
                                                            uint8_t* q, float* scale) {
  using namespace mma;
  __shared__ unsigned amax;
  const bool vec = q_vec_rows<T>(x, ldx, K);
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const T* row = x + m * ldx;
    if (threadIdx.x == 0) amax = 0u;
    __syncthreads();
    q_reduce(q_row_part(row, K, vec, threadIdx.x, blockDim.x), 32, &amax, true);
    __syncthreads();
    const float s = q_scale(__uint_as_float(amax));
    uint8_t* qr = q + m * K;
    if (vec) {  // K % 8 == 0: rows of q 8-byte aligned
      if constexpr (sizeof(T) == 2) {
        for (int64_t v = threadIdx.x; v < K / kQVec; v += blockDim.x)
          reinterpret_cast<uint2*>(qr)[v] = q_vec<T>(__ldg(reinterpret_cast<const uint4*>(row) + v), s);
      }
    } else {
      for (int64_t k = threadIdx.x; k < K; k += blockDim.x) qr[k] = static_cast<uint8_t>(q_byte(to_f(row[k]), s));
    }
    if (threadIdx.x == 0) scale[m] = s;
    __syncthreads();  // amax is reset for the next row
  }
}

// Whether `quantize` runs inside the W8A8 kernel: float16 / bfloat16 x whose M tile rows are few bytes.
bool fused_quantize(const W8A8MmLaunch& a) {
  return a.dtype != DType::f32 && imin<int64_t>(a.M, 16) * a.K * 2 <= kFusedQuantBytes;
}

// The quantization kernel's part of the workspace (x quantized, then its scales), 16-byte rounded.
size_t prequant_bytes(const W8A8MmLaunch& a) {
  return round_up<size_t>(static_cast<size_t>(a.M * a.K), 16) + round_up<size_t>(static_cast<size_t>(a.M) * 4, 16);
}

bool prequantize(const W8A8MmLaunch& a) {
  return a.quantize && a.M > 0 && a.N > 0 && a.K > 0 && !fused_quantize(a);
}

// The launch that multiplies the quantized rows the workspace at `ws` holds (null: for sizing only).
W8A8MmLaunch after_prequant(const W8A8MmLaunch& a, void* ws) {
  W8A8MmLaunch b = a;
  b.quantize = false;
  b.ldx = a.K;
  b.x = ws;
  b.x_scale = nullptr;
  if (ws)
    b.x_scale = reinterpret_cast<const float*>(static_cast<char*>(ws) + round_up<size_t>(static_cast<size_t>(a.M * a.K), 16));
  return b;
}

template <typename T>
cudaError_t launch_quantize_rows(const void* x, int64_t ldx, int64_t M, int64_t K, void* q, float* scale,
                                 cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(imin<int64_t>(M, 65535));
  quantize_rows_kernel<T><<<blocks, 256, 0, stream>>>(static_cast<const T*>(x), ldx, M, K, static_cast<uint8_t*>(q),
                                                      scale);
  return cudaGetLastError();
}

cudaError_t quantize_rows(const void* x, int64_t ldx, int64_t M, int64_t K, DType dtype, void* q, float* scale,
                          cudaStream_t stream) {
  switch (dtype) {
    case DType::f32: return launch_quantize_rows<float>(x, ldx, M, K, q, scale, stream);
    case DType::f16: return launch_quantize_rows<__half>(x, ldx, M, K, q, scale, stream);
    case DType::bf16: return launch_quantize_rows<__nv_bfloat16>(x, ldx, M, K, q, scale, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

size_t w8a8_mm_workspace_bytes(const W8A8MmLaunch& a, cudaError_t* err) {
  if (!prequantize(a)) return Driver<W8A8Decode>::workspace_bytes(a, err);
  const size_t rest = Driver<W8A8Decode>::workspace_bytes(after_prequant(a, nullptr), err);
  return err && *err != cudaSuccess ? 0 : prequant_bytes(a) + rest;
}

cudaError_t w8a8_mm(const W8A8MmLaunch& a, void* workspace, cudaStream_t stream) {
  if (!prequantize(a)) return Driver<W8A8Decode>::run(a, workspace, stream);
  // refused launches are refused before anything runs
  if (!W8A8Decode::valid(a)) return cudaErrorInvalidValue;
  DevInfo d;
  cudaError_t e = dev_info(&d);
  if (e != cudaSuccess) return e;
  if (d.cc_major < 8) return cudaErrorInvalidDeviceFunction;
  if (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 16 != 0) return cudaErrorInvalidValue;
  const W8A8MmLaunch b = after_prequant(a, workspace);
  e = quantize_rows(a.x, a.ldx, a.M, a.K, a.dtype, const_cast<void*>(b.x), const_cast<float*>(b.x_scale), stream);
  if (e != cudaSuccess) return e;
  return Driver<W8A8Decode>::run(b, static_cast<char*>(workspace) + prequant_bytes(a), stream);
}

cudaError_t quantize_per_token_rows(const void* x, int64_t ldx, int64_t M, int64_t K, DType dtype, int8_t* q,
                                    float* scale, cudaStream_t stream) {
  if (M < 0 || K < 0 || (M > 0 && (x == nullptr || q == nullptr || scale == nullptr)) ||
      reinterpret_cast<uintptr_t>(q) % 8 != 0)  // rows of q written 8 bytes at a time
    return cudaErrorInvalidValue;
  if (M == 0) return cudaSuccess;
  return quantize_rows(x, ldx, M, K, dtype, q, scale, stream);
}

}  // namespace cuda
}  // namespace sparsekit
