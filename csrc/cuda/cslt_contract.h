// The contracts of cuSPARSELt that sparsekit's binding (ops_cusparselt.cpp) relies on, written as small
// torch- and cuSPARSELt-free functions so that the C++ tests (csrc/tests/test_cslt_contract.cpp) can pin
// them with fakes on a machine without a GPU.
#pragma once
#include <cstdint>

namespace sparsekit {
namespace cuda {

// cusparseLtSpMMAPruneCheck2 writes its int flag only where it finds a group that is not 2:4 and leaves
// it untouched otherwise, so the flag must be zeroed before the check: an uninitialised flag answers with
// whatever the allocator left in that memory (on an H200 that refused valid weights in 86 tests).
// zero(flag), check(flag) and read(flag) -> int are device operations in the binding and plain memory
// in the tests. True when the weight is 2:4.
template <typename Zero, typename Check, typename Read>
bool prune_check_passes(int* flag, Zero&& zero, Check&& check, Read&& read) {
  zero(flag);
  check(flag);
  return read(flag) == 0;
}

// 16-byte alignment, which every matrix, vector and buffer handed to cuSPARSELt needs.
constexpr uintptr_t kCsltAlignment = 16;
inline bool cslt_aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kCsltAlignment == 0; }

// What a search decides and a later plan of the same shape must reproduce: the kernel configuration
// and its split-K settings (a configuration id alone gives another kernel when the search split K).
struct AlgChoice {
  int config_id = 0;
  int split_k = 1;
  int split_k_mode = 1;  // CUSPARSELT_SPLIT_K_MODE_ONE_KERNEL
  int split_k_buffers = 1;
  bool operator==(const AlgChoice& o) const {
    return config_id == o.config_id && split_k == o.split_k && split_k_mode == o.split_k_mode &&
           split_k_buffers == o.split_k_buffers;
  }
};

// Reads / writes an AlgChoice through an attribute getter / setter get(attr, int*) / set(attr, int).
// Attr: the library's enum values for config id, split-K, split-K mode and split-K buffers.
template <typename Attr, typename Get>
AlgChoice read_alg_choice(Get&& get, Attr config, Attr split_k, Attr mode, Attr buffers) {
  AlgChoice c;
  get(config, &c.config_id);
  get(split_k, &c.split_k);
  get(mode, &c.split_k_mode);
  get(buffers, &c.split_k_buffers);
  return c;
}

template <typename Attr, typename Set>
void apply_alg_choice(const AlgChoice& c, Set&& set, Attr config, Attr split_k, Attr mode, Attr buffers) {
  set(config, c.config_id);
  if (c.split_k > 1) {  // as PyTorch's binding does: the split-K attributes only when the search split K
    set(split_k, c.split_k);
    set(mode, c.split_k_mode);
    set(buffers, c.split_k_buffers);
  }
}

}  // namespace cuda
}  // namespace sparsekit
