// What sparsekit._C (csrc/module.cpp) needs from the cuSPARSELt bindings (csrc/cuda/ops_cusparselt.cpp),
// torch- and cuSPARSELt-free so that module.cpp compiles without either header. Only defined when the
// extension is built with SPARSEKIT_WITH_CUSPARSELT.
#pragma once
#include <cstdint>
#include <string>

namespace sparsekit {
namespace cuda {

struct CusparseLtStats {
  int64_t entries = 0;          // plans held now
  int64_t capacity = 0;         // most plans held (SPARSEKIT_CSLT_CACHE_SIZE); least recently used evicted
  int64_t plans_created = 0;    // cusparseLtMatmulPlanInit calls since the start (or the last release)
  int64_t searches = 0;         // cusparseLtMatmulSearch calls since the start (or the last release)
  int64_t hits = 0;             // calls served by a cached plan
  int64_t evictions = 0;
  int64_t algs_remembered = 0;  // shapes whose searched algorithm is remembered
};

CusparseLtStats cusparselt_stats();
// Destroys every cached plan and every handle (called at interpreter exit, while CUDA is still up;
// later calls start afresh). Never called from a static destructor: see ops_cusparselt.cpp.
void cusparselt_release();
// "major.minor.patch" of the header the extension was compiled against / of the library loaded.
std::string cusparselt_build_version();
std::string cusparselt_loaded_version();

}  // namespace cuda
}  // namespace sparsekit
