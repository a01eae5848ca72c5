// W8A8 x dense or 2:4 for small M (decode), on the tensor cores: the shared tensor-core decode kernel of
// mma_decode.cuh with int8 activations (Int8X: m16n8k32, exact int32 sums, the reference's epilogue) and int8
// rows (int8_mm) or 2:4 int8 rows (S24Int8Rows: each group's two bytes placed at their columns by one byte
// permute). Split-K partials are int32, added exactly by w8a8_finish_kernel.
#include "cuda/w8a8_kernel.cuh"

#include "cuda/mma_decode.cuh"

namespace sparsekit {
namespace cuda {
namespace {

using namespace decode;

struct W8A8Decode {
  using Launch = W8A8MmLaunch;

  static bool valid(const Launch& a) { return a.meta == nullptr || a.K % 4 == 0; }

  template <typename T>
  static cudaError_t make_plan(const Launch& a, const DevInfo& d, Plan* plan) {
    if (d.cc_major < 8) return cudaErrorInvalidDeviceFunction;
    Plan p;
    if (a.meta) {
      p.ch = mma::chunking<mma::S24Int8Rows, mma::Int8X<T>>(a.M, a.K, d);
      p.vec = a.K % 16 == 0 && reinterpret_cast<uintptr_t>(a.w) % 8 == 0 && reinterpret_cast<uintptr_t>(a.meta) % 2 == 0;
    } else {
      p.ch = mma::chunking<mma::Int8Rows, mma::Int8X<T>>(a.M, a.K, d);
      p.vec = a.K % 16 == 0 && reinterpret_cast<uintptr_t>(a.w) % 16 == 0;
    }
    plan_workspace(&p, a.M, a.N);
    *plan = p;
    return cudaSuccess;
  }

  template <typename T, int MT, bool kVec>
  static cudaError_t launch_tiles(const Launch& a, const Plan& plan, const DevInfo& d, const Output& out,
                                  int64_t m_begin, int64_t tiles, cudaStream_t stream) {
    mma::Params p;
    p.M = a.M; p.N = a.N; p.K = a.K;
    p.w = a.w; p.meta = a.meta; p.scale = a.w_scale; p.x_scale = a.x_scale; p.x = a.x; p.ldx = a.ldx;
    p.out = out;
    if (a.meta) return mma::launch<mma::S24Int8Rows, mma::Int8X<T>, MT, kVec>(p, plan, d, m_begin, tiles, stream);
    return mma::launch<mma::Int8Rows, mma::Int8X<T>, MT, kVec>(p, plan, d, m_begin, tiles, stream);
  }

  template <typename T>
  static cudaError_t finish(const Launch& a, const Output& out, int splits, cudaStream_t stream) {
    return mma::launch_w8a8_finish<T>(out, splits, a.x_scale, a.w_scale, stream);
  }
};

}  // namespace

size_t w8a8_mm_workspace_bytes(const W8A8MmLaunch& a, cudaError_t* err) {
  return Driver<W8A8Decode>::workspace_bytes(a, err);
}

cudaError_t w8a8_mm(const W8A8MmLaunch& a, void* workspace, cudaStream_t stream) {
  return Driver<W8A8Decode>::run(a, workspace, stream);
}

}  // namespace cuda
}  // namespace sparsekit
