// int8 weight-only (W8A16) x dense for small M (decode), on the tensor cores: the shared tensor-core decode
// kernel of mma_decode.cuh with int8 rows (Int8Rows: 16-byte loads, an exact int8 -> float16 / bfloat16
// conversion of two instructions per pair, the per-row scale applied to the group's sums).
#include "cuda/int8_wo_kernel.cuh"

#include "cuda/mma_decode.cuh"

namespace sparsekit {
namespace cuda {
namespace {

using namespace decode;

struct Int8WoDecode : FloatFinish {
  using Launch = Int8WoMmLaunch;
  static constexpr bool kWideTile = true;  // M > 16 in tiles of 32 (mma::tile_rows_for)

  static bool valid(const Launch& a) { return a.dtype != DType::f32; }

  template <typename T>
  static cudaError_t make_plan(const Launch& a, const DevInfo& d, Plan* plan) {
    if constexpr (sizeof(T) != 2) {
      return cudaErrorInvalidValue;
    } else {
      if (d.cc_major < 8) return cudaErrorInvalidDeviceFunction;
      Plan p;
      mma::plan_chunks<mma::Int8Rows, mma::HalfX<T>>(&p, a.M, a.K, d);
      p.vec = a.K % 16 == 0 && reinterpret_cast<uintptr_t>(a.w_q) % 16 == 0;
      plan_workspace(&p, a.M, a.N);
      *plan = p;
      return cudaSuccess;
    }
  }

  template <typename T, int MT, bool kVec>
  static cudaError_t launch_tiles(const Launch& a, const Plan& plan, const DevInfo& d, const Output& out,
                                  int64_t m_begin, int64_t tiles, cudaStream_t stream) {
    if constexpr (sizeof(T) != 2) {
      return cudaErrorInvalidValue;
    } else {
      mma::Params p;
      p.M = a.M; p.N = a.N; p.K = a.K;
      p.w = a.w_q; p.scale = a.w_scale; p.x = a.x; p.ldx = a.ldx;
      p.out = out;
      return mma::launch<mma::Int8Rows, mma::HalfX<T>, MT, kVec>(p, plan, d, m_begin, tiles, stream);
    }
  }
};

}  // namespace

size_t int8_wo_mm_workspace_bytes(const Int8WoMmLaunch& a, cudaError_t* err) {
  return Driver<Int8WoDecode>::workspace_bytes(a, err);
}

cudaError_t int8_wo_mm(const Int8WoMmLaunch& a, void* workspace, cudaStream_t stream) {
  return Driver<Int8WoDecode>::run(a, workspace, stream);
}

}  // namespace cuda
}  // namespace sparsekit
