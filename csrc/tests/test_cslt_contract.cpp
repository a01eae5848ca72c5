// Pins the cuSPARSELt contracts of csrc/cuda/cslt_contract.h with fakes (no GPU, no cuSPARSELt):
//  * the prune check writes its flag only on a violation, so the flag must be zeroed first;
//  * a plan built after a search reproduces the searched configuration with its split-K settings.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "cuda/cslt_contract.h"

using sparsekit::cuda::AlgChoice;

static int failures = 0;
#define EXPECT(cond)                                                     \
  do {                                                                   \
    if (!(cond)) {                                                       \
      std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                        \
    }                                                                    \
  } while (0)

// The fake of cusparseLtSpMMAPruneCheck2: groups of four, a violation where more than two are non-zero;
// writes 1 to the flag at a violation and nothing otherwise (the library's documented behaviour).
static void fake_prune_check(const float* w, int n, int* flag) {
  for (int g = 0; g + 4 <= n; g += 4) {
    int nz = 0;
    for (int i = 0; i < 4; ++i) nz += w[g + i] != 0.f;
    if (nz > 2) *flag = 1;
  }
}

static bool check_with(const float* w, int n, int poison, bool zero_first) {
  int flag = poison;  // what the allocator left there
  auto zero = [&](int* f) {
    if (zero_first) *f = 0;
  };
  return sparsekit::cuda::prune_check_passes(&flag, zero, [&](int* f) { fake_prune_check(w, n, f); },
                                             [](int* f) { return *f; });
}

static void test_prune_check_flag() {
  const float ok[8] = {1, 0, 2, 0, 0, 0, 3, 4};
  const float bad[8] = {1, 0, 2, 0, 5, 6, 7, 0};
  for (int poison : {0, 1, 0x7f7f7f7f, -1}) {
    EXPECT(check_with(ok, 8, poison, true));
    EXPECT(!check_with(bad, 8, poison, true));
  }
  // The bug seen on the H200: without zeroing, a valid weight is refused whenever the memory held garbage.
  EXPECT(!check_with(ok, 8, 0x7f7f7f7f, false));
}

// A fake algorithm selection: attributes in a map, as cusparseLtMatmulAlgSet/GetAttribute keep them.
enum FakeAttr { kConfig, kSplitK, kMode, kBuffers };

static void test_alg_choice_round_trip() {
  std::map<int, int> searched = {{kConfig, 7}, {kSplitK, 4}, {kMode, 2}, {kBuffers, 3}};
  auto get = [&](FakeAttr a, int* v) { *v = searched[a]; };
  const AlgChoice c = sparsekit::cuda::read_alg_choice(get, kConfig, kSplitK, kMode, kBuffers);
  EXPECT(c.config_id == 7 && c.split_k == 4 && c.split_k_mode == 2 && c.split_k_buffers == 3);

  std::map<int, int> fresh = {{kConfig, 0}, {kSplitK, 1}, {kMode, 1}, {kBuffers, 1}};  // the defaults
  auto set = [&](FakeAttr a, int v) { fresh[a] = v; };
  sparsekit::cuda::apply_alg_choice(c, set, kConfig, kSplitK, kMode, kBuffers);
  EXPECT(fresh == searched);  // the second plan is the searched one, split-K included

  // No split: only the configuration is set (split-K attributes keep the library's defaults).
  std::map<int, int> fresh2 = {{kConfig, 0}, {kSplitK, 1}, {kMode, 1}, {kBuffers, 1}};
  AlgChoice no_split;
  no_split.config_id = 5;
  int sets = 0;
  sparsekit::cuda::apply_alg_choice(no_split, [&](FakeAttr a, int v) { fresh2[a] = v; ++sets; }, kConfig, kSplitK,
                                    kMode, kBuffers);
  EXPECT(fresh2[kConfig] == 5 && fresh2[kSplitK] == 1 && sets == 1);
}

static void test_alignment() {
  alignas(16) unsigned char buf[64] = {};
  EXPECT(sparsekit::cuda::cslt_aligned(buf));
  EXPECT(!sparsekit::cuda::cslt_aligned(buf + 2));
  EXPECT(sparsekit::cuda::cslt_aligned(buf + 16));
}

int main() {
  test_prune_check_flag();
  test_alg_choice_round_trip();
  test_alignment();
  if (failures) {
    std::fprintf(stderr, "%d failure(s)\n", failures);
    return 1;
  }
  std::printf("test_cslt_contract: all passed\n");
  return 0;
}
