// The index-content checks of the CUDA bindings: the ATen checks of csrc/index_checks.h, run once per
// buffer (csrc/checked_once.h). A check reads its verdict back to the host, a device sync, which is
// illegal while the current stream captures a CUDA graph: a buffer not checked yet is refused then
// (a malformed one must never reach a kernel), a checked one costs nothing during capture.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>

#include <initializer_list>

#include "checked_once.h"
#include "index_checks.h"

namespace sparsekit {
namespace cuda {

// `op` names the op in messages and is the CheckedOnce kind; call with the tensors' device current.
template <typename Check>
void check_index_buffers_once(const char* op, std::initializer_list<const at::Tensor*> buffers,
                              std::initializer_list<int64_t> params, Check&& check) {
  CheckedOnce::run(op, buffers, params, [&] {
    TORCH_CHECK(c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None, op,
                ": call the op once before capturing a CUDA graph so its index buffers can be checked");
    check();
  });
}

}  // namespace cuda
}  // namespace sparsekit
