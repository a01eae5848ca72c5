// 2:4 matmuls through cuSPARSELt: the CUDA kernels of sparsekit::cslt_compress and sparsekit::cslt_mm.
//
// Layout. y (M, N) = x (M, K) @ W.T is computed as D (N x M) = A (N x K, structured 2:4) · B (K x M):
// A is the row-major weight (its compressed form), B is row-major x read as an (M x K) matrix with
// opB = TRANSPOSE, and D is column-major (N x M) with ld N, which is row-major y. Neither x nor y is
// copied (x is copied only when M must be padded or x is not contiguous and 16-byte aligned).
//
// Why this file exists: PyTorch's _cslt_sparse_mm builds the descriptors and the plan (and optionally
// searches) on every call, which costs more than the matmul itself at small M. Here:
//  * one cusparseLtHandle_t per device, created on first use and shared by the plans built on it (a handle
//    lives while a plan uses it, so cusparselt_release() in one thread never pulls it from under another);
//  * descriptors, matmul descriptor, algorithm selection and plan are built once per key
//    (device, N, K, padded M, input dtype, output dtype, alpha vector?, fused bias pointer) and kept in an
//    LRU cache guarded by a mutex (bounded by SPARSEKIT_CSLT_CACHE_SIZE, default 1024 plans);
//  * the algorithm is searched once per shape key with cusparseLtMatmulSearch on first use (not under CUDA
//    graph capture) and remembered with its split-K settings (AlgChoice), so a plan built later for the
//    same shape (another layer's bias) is the searched one without searching again;
//    SPARSEKIT_CSLT_SEARCH=0 keeps the default algorithm, =1 searches for every dtype. By default float16
//    is not searched: the one H200 run (cuSPARSELt 0.8.0) hit an illegal instruction in float16 matmuls
//    only, and the default algorithm is what PyTorch's own path runs (bench/cslt_probe.py tells which);
//  * everything launches on the current stream; every cuSPARSELt status is checked and named.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cusparseLt.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "checks.h"
#include "cuda/cslt_contract.h"
#include "cuda/cusparselt_api.h"
#include "cuda/scale_epilogue_kernel.cuh"

namespace sparsekit {
namespace cuda {
namespace {

constexpr const char* kCompressOp = "sparsekit.cslt_compress";
constexpr const char* kMmOp = "sparsekit.cslt_mm";
constexpr uint32_t kAlignment = kCsltAlignment;  // bytes; every buffer passed here is 16-byte aligned

void check_status(cusparseStatus_t s, const char* call) {
  TORCH_CHECK(s == CUSPARSE_STATUS_SUCCESS, "sparsekit: ", call, " failed: ", cusparseLtGetErrorName(s), " (",
              cusparseLtGetErrorString(s), ")");
}
// CSLT(cusparseLtFoo, args...): calls it and raises, naming the call, unless it succeeded.
#define CSLT(fn, ...) check_status(fn(__VA_ARGS__), #fn)

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoll(v, nullptr, 10) : fallback;
}

// SPARSEKIT_CSLT_SEARCH: 0 never searches, 1 searches every dtype, unset: every dtype but float16 (see top).
bool search_enabled(at::ScalarType in) {
  static const int64_t setting = env_int("SPARSEKIT_CSLT_SEARCH", -1);
  return setting < 0 ? in != at::kHalf : setting != 0;
}

// ------------------------------------------------------------------------------------------ dtype rules
// Shape rules of cuSPARSELt (0.6-0.8) for a row-major structured A and a dense B, as PyTorch's
// SparseSemiStructuredTensorCUSPARSELT also states them: A's rows and columns (N, K) multiples of 16 for
// 16-bit types and of 32 for 8-bit ones; B's rows (M) multiples of 8 and 16, which we meet by padding M.
struct DtypeRule {
  cudaDataType type;
  int64_t nk_multiple;
  int64_t m_multiple;
};

bool supported_input(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16 || t == at::kChar; }

DtypeRule rule_of(const char* op, at::ScalarType t) {
  switch (t) {
    case at::kHalf: return {CUDA_R_16F, 16, 8};
    case at::kBFloat16: return {CUDA_R_16BF, 16, 8};
    case at::kChar: return {CUDA_R_8I, 32, 16};
    default: break;
  }
  TORCH_CHECK_TYPE(false, op, ": expected a weight / x of dtype float16, bfloat16 or int8, got ", dtype_name(t));
  return {CUDA_R_16F, 16, 8};
}

cudaDataType out_type(at::ScalarType t) { return t == at::kBFloat16 ? CUDA_R_16BF : CUDA_R_16F; }

void check_nk(const char* op, int64_t N, int64_t K, at::ScalarType t) {
  const int64_t mult = rule_of(op, t).nk_multiple;
  TORCH_CHECK_VALUE(N > 0 && K > 0 && N % mult == 0 && K % mult == 0, op, ": cuSPARSELt needs out_features and ",
                    "in_features that are positive multiples of ", mult, " for ", dtype_name(t), ", got ", N, " x ",
                    K, "; sparsekit's own 2:4 kernel (sparse24_mm) serves other shapes");
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// ------------------------------------------------------------------------------------------ RAII wrappers
// A handle and its destruction: shared by the plans built on it, destroyed with the last of them.
using HandlePtr = std::shared_ptr<const cusparseLtHandle_t>;

class Handles {
 public:
  // The device's handle, created once. cuSPARSELt ties a handle to the device current at cusparseLtInit.
  HandlePtr get(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& h = handles_[device];
    if (!h) {
      const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
      auto* fresh = new cusparseLtHandle_t();
      const cusparseStatus_t s = cusparseLtInit(fresh);
      if (s != CUSPARSE_STATUS_SUCCESS) delete fresh;
      check_status(s, "cusparseLtInit");
      h = HandlePtr(fresh, [](const cusparseLtHandle_t* p) {
        cusparseLtDestroy(p);  // nothing to report to from a deleter
        delete p;
      });
    }
    return h;
  }
  // Forgets the handles: each is destroyed once no plan (in any thread) holds it any more.
  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    handles_.clear();
  }

 private:
  std::mutex mu_;
  std::unordered_map<int, HandlePtr> handles_;
};

// Leaked on purpose (never destroyed by a static destructor): at process exit the CUDA driver may be
// gone before static destructors run. cusparselt_release(), registered with Python's atexit, lets them go.
Handles& handles() {
  static auto* h = new Handles();
  return *h;
}

class MatDesc {
 public:
  MatDesc() = default;
  MatDesc(const MatDesc&) = delete;
  MatDesc& operator=(const MatDesc&) = delete;
  ~MatDesc() {
    if (live_) cusparseLtMatDescriptorDestroy(&d_);
  }
  // The row-major (N x K) 2:4 weight.
  void init_structured(const cusparseLtHandle_t* h, int64_t N, int64_t K, cudaDataType t) {
    CSLT(cusparseLtStructuredDescriptorInit, h, &d_, N, K, K, kAlignment, t, CUSPARSE_ORDER_ROW,
         CUSPARSELT_SPARSITY_50_PERCENT);
    live_ = true;
  }
  void init_dense(const cusparseLtHandle_t* h, int64_t rows, int64_t cols, int64_t ld, cudaDataType t,
                  cusparseOrder_t order) {
    CSLT(cusparseLtDenseDescriptorInit, h, &d_, rows, cols, ld, kAlignment, t, order);
    live_ = true;
  }
  const cusparseLtMatDescriptor_t* get() const { return &d_; }

 private:
  cusparseLtMatDescriptor_t d_{};
  bool live_ = false;
};

// The compressed size of the (N x K) weight: what cslt_compress returns and cslt_mm expects.
size_t compressed_bytes(const cusparseLtHandle_t* h, const MatDesc& a, size_t* buffer_bytes = nullptr) {
  size_t bytes = 0, buffer = 0;
  CSLT(cusparseLtSpMMACompressedSize2, h, a.get(), &bytes, &buffer);
  if (buffer_bytes) *buffer_bytes = buffer;
  return bytes;
}

// ------------------------------------------------------------------------------------------ plans
struct PlanKey {
  int device = 0;
  int64_t n = 0, k = 0, m = 0;  // m: padded
  at::ScalarType in = at::kHalf, out = at::kHalf;
  bool alpha_vector = false;
  uintptr_t bias = 0;  // the fused bias pointer (0: none); see Plan

  bool operator==(const PlanKey& o) const {
    return device == o.device && n == o.n && k == o.k && m == o.m && in == o.in && out == o.out &&
           alpha_vector == o.alpha_vector && bias == o.bias;
  }
  // The key of the algorithm choice: the bias pointer does not change which algorithm is fastest.
  PlanKey shape() const {
    PlanKey s = *this;
    s.bias = bias ? 1 : 0;
    return s;
  }
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    size_t h = std::hash<int64_t>()(k.n);
    for (int64_t v : {int64_t(k.device), k.k, k.m, int64_t(k.in), int64_t(k.out), int64_t(k.alpha_vector),
                      static_cast<int64_t>(k.bias)})
      h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

// RAII for the algorithm selection and the plan, so that a constructor that throws half-way (a plan
// that cannot be initialised for a key) releases what it had made.
class AlgSelection {
 public:
  // `choice`: a remembered search result to reproduce, or none (the library's default algorithm).
  AlgSelection(const cusparseLtHandle_t* h, const cusparseLtMatmulDescriptor_t* matmul,
               const std::optional<AlgChoice>& choice)
      : handle_(h) {
    CSLT(cusparseLtMatmulAlgSelectionInit, h, &alg_, matmul, CUSPARSELT_MATMUL_ALG_DEFAULT);
    try {  // a constructor that throws runs no destructor of its own
      if (choice)
        apply_alg_choice(*choice, [&](cusparseLtMatmulAlgAttribute_t attr, int v) { set(attr, v); },
                         CUSPARSELT_MATMUL_ALG_CONFIG_ID, CUSPARSELT_MATMUL_SPLIT_K, CUSPARSELT_MATMUL_SPLIT_K_MODE,
                         CUSPARSELT_MATMUL_SPLIT_K_BUFFERS);
    } catch (...) {
      cusparseLtMatmulAlgSelectionDestroy(&alg_);
      throw;
    }
  }
  // The configuration selected now (after a search: the one found), split-K settings included.
  AlgChoice choice() const {
    auto get = [&](cusparseLtMatmulAlgAttribute_t attr, int* v) {
      CSLT(cusparseLtMatmulAlgGetAttribute, handle_, &alg_, attr, v, sizeof(int));
    };
    return read_alg_choice(get, CUSPARSELT_MATMUL_ALG_CONFIG_ID, CUSPARSELT_MATMUL_SPLIT_K,
                           CUSPARSELT_MATMUL_SPLIT_K_MODE, CUSPARSELT_MATMUL_SPLIT_K_BUFFERS);
  }
  AlgSelection(const AlgSelection&) = delete;
  AlgSelection& operator=(const AlgSelection&) = delete;
  ~AlgSelection() { cusparseLtMatmulAlgSelectionDestroy(&alg_); }
  const cusparseLtMatmulAlgSelection_t* get() const { return &alg_; }

 private:
  void set(cusparseLtMatmulAlgAttribute_t attr, int v) {
    CSLT(cusparseLtMatmulAlgSetAttribute, handle_, &alg_, attr, &v, sizeof(v));
  }
  const cusparseLtHandle_t* handle_;
  cusparseLtMatmulAlgSelection_t alg_{};
};

class PlanHandle {
 public:
  PlanHandle(const cusparseLtHandle_t* h, const cusparseLtMatmulDescriptor_t* matmul,
             const cusparseLtMatmulAlgSelection_t* alg) {
    CSLT(cusparseLtMatmulPlanInit, h, &plan_, matmul, alg);
  }
  PlanHandle(const PlanHandle&) = delete;
  PlanHandle& operator=(const PlanHandle&) = delete;
  ~PlanHandle() { cusparseLtMatmulPlanDestroy(&plan_); }
  cusparseLtMatmulPlan_t* get() { return &plan_; }

 private:
  cusparseLtMatmulPlan_t plan_{};
};

// The matmul descriptor of a key (no destroy call exists for it).
struct MatmulDesc {
  MatDesc a, b, d;
  cusparseLtMatmulDescriptor_t matmul{};

  MatmulDesc(const cusparseLtHandle_t* h, const PlanKey& key) {
    const DtypeRule rule = rule_of(kMmOp, key.in);
    const cudaDataType dtype_d = key.in == at::kChar ? out_type(key.out) : rule.type;
    a.init_structured(h, key.n, key.k, rule.type);
    b.init_dense(h, key.m, key.k, key.k, rule.type, CUSPARSE_ORDER_ROW);  // x, read transposed
    d.init_dense(h, key.n, key.m, key.n, dtype_d, CUSPARSE_ORDER_COL);   // y, row-major (M, N)
    CSLT(cusparseLtMatmulDescriptorInit, h, &matmul, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_TRANSPOSE,
         a.get(), b.get(), d.get(), d.get(), key.in == at::kChar ? CUSPARSE_COMPUTE_32I : CUSPARSE_COMPUTE_32F);
    if (key.alpha_vector) {
      const int on = 1;
      CSLT(cusparseLtMatmulDescSetAttribute, h, &matmul, CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING, &on, sizeof(on));
    }
    if (key.bias) {
      void* bias = reinterpret_cast<void*>(key.bias);
      CSLT(cusparseLtMatmulDescSetAttribute, h, &matmul, CUSPARSELT_MATMUL_BIAS_POINTER, &bias, sizeof(bias));
    }
  }
};

// Everything cusparseLtMatmul needs for one key. The bias pointer is an attribute of the matmul
// descriptor, set before cusparseLtMatmulPlanInit; cuSPARSELt does not document that a later change of
// it reaches an existing plan, so a fused bias is part of the key. A layer's bias is a parameter whose
// pointer is stable, so this costs one plan per (layer, M), not one per call, and no extra search.
// Members are declared in the order they are built, so a throw part-way releases what exists.
class Plan {
 public:
  // `choice`: the remembered search result of this shape, or none (the default algorithm).
  Plan(HandlePtr h, const PlanKey& key, const std::optional<AlgChoice>& choice)
      : owner_(std::move(h)), handle(owner_.get()), desc_(handle, key), alg_(handle, &desc_.matmul, choice),
        plan_(handle, &desc_.matmul, alg_.get()) {
    refresh_workspace();
    compressed = compressed_bytes(handle, desc_.a);
    // A remembered algorithm, or no search wanted: nothing left to tune.
    tuned.store(choice.has_value() || !search_enabled(key.in));
  }
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;

  void refresh_workspace() {
    size_t ws = 0;
    CSLT(cusparseLtMatmulGetWorkspace, handle, plan_.get(), &ws);
    workspace.store(ws);
  }
  // The configuration the plan runs now (after a search: the one found), split-K settings included.
  AlgChoice choice() const { return alg_.choice(); }
  cusparseLtMatmulPlan_t* plan() { return plan_.get(); }

 private:
  HandlePtr owner_;  // first: released last

 public:
  const cusparseLtHandle_t* handle;
  size_t compressed = 0;
  std::atomic<size_t> workspace{0};
  std::atomic<bool> tuned{false};
  std::mutex tune_mu;  // held while searching, and while launching on a plan not yet tuned

 private:
  MatmulDesc desc_;
  AlgSelection alg_;
  PlanHandle plan_;
};

class PlanCache {
 public:
  explicit PlanCache(size_t capacity) : capacity_(capacity < 1 ? 1 : capacity) {}

  // The plan of `key`, built (with the remembered algorithm of its shape, if any) on a miss.
  std::shared_ptr<Plan> get(const PlanKey& key) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(key);
    if (it != map_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.second);
      ++stats_.hits;
      return it->second.first;
    }
    auto alg = algs_.find(key.shape());
    auto plan = std::make_shared<Plan>(handles().get(key.device), key,
                                       alg == algs_.end() ? std::nullopt : std::optional<AlgChoice>(alg->second));
    ++stats_.plans_created;
    lru_.push_front(key);
    map_.emplace(key, std::make_pair(plan, lru_.begin()));
    while (map_.size() > capacity_) {  // a plan in use elsewhere lives on in its shared_ptr
      map_.erase(lru_.back());
      lru_.pop_back();
      ++stats_.evictions;
    }
    return plan;
  }
  void remember(const PlanKey& key, const AlgChoice& choice) {
    std::lock_guard<std::mutex> lock(mu_);
    algs_[key.shape()] = choice;
    ++stats_.searches;
  }
  CusparseLtStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    CusparseLtStats s = stats_;
    s.entries = static_cast<int64_t>(map_.size());
    s.capacity = static_cast<int64_t>(capacity_);
    s.algs_remembered = static_cast<int64_t>(algs_.size());
    return s;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    map_.clear();
    lru_.clear();
    algs_.clear();
    stats_ = CusparseLtStats{};
  }

 private:
  std::mutex mu_;
  size_t capacity_;
  std::list<PlanKey> lru_;  // most recently used first
  std::unordered_map<PlanKey, std::pair<std::shared_ptr<Plan>, std::list<PlanKey>::iterator>, PlanKeyHash> map_;
  std::unordered_map<PlanKey, AlgChoice, PlanKeyHash> algs_;  // shape key -> searched algorithm
  CusparseLtStats stats_;
};

PlanCache& plan_cache() {  // leaked on purpose, like handles()
  static auto* c = new PlanCache(static_cast<size_t>(env_int("SPARSEKIT_CSLT_CACHE_SIZE", 1024)));
  return *c;
}

// ------------------------------------------------------------------------------------------ launch
struct MatmulArgs {
  const void* alpha;  // host float, or a device float vector (alpha-vector scaling)
  const void* a;      // compressed weight
  const void* b;      // x
  void* d;            // y
};

at::Tensor workspace_for(size_t bytes, const at::Tensor& like) {
  // From the caching allocator: stream-ordered (safe to free right after the enqueue), free to get once
  // cached, and captured correctly by CUDA graphs (a private pool), which a hand-grown per-stream buffer
  // would have to re-implement. Most cuSPARSELt plans need 0 bytes.
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  return cudaStreamIsCapturing(stream, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone;
}

void enqueue(Plan& p, const MatmulArgs& m, const at::Tensor& like, cudaStream_t stream) {
  const float beta = 0.f;
  auto ws = workspace_for(p.workspace.load(), like);
  CSLT(cusparseLtMatmul, p.handle, p.plan(), m.alpha, m.a, m.b, &beta, m.d, m.d, ws.numel() ? ws.data_ptr() : nullptr,
       &stream, 1);
}

// Searches the plan's algorithm once (the first eager call of its shape), then launches. The search
// times every candidate on the stream (it synchronises), so it is skipped under graph capture: the plan
// then runs its default algorithm and a later eager call searches.
void tune_and_enqueue(Plan& p, const PlanKey& key, const MatmulArgs& m, const at::Tensor& like, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(p.tune_mu);
  if (!p.tuned.load() && !capturing(stream)) {
    const float beta = 0.f;
    auto ws = workspace_for(p.workspace.load(), like);
    CSLT(cusparseLtMatmulSearch, p.handle, p.plan(), m.alpha, m.a, m.b, &beta, m.d, m.d,
         ws.numel() ? ws.data_ptr() : nullptr, &stream, 1);
    p.refresh_workspace();  // the chosen algorithm may need another workspace
    plan_cache().remember(key, p.choice());
    p.tuned.store(true);
  }
  enqueue(p, m, like, stream);  // under the lock: no search may change the plan while it is read
}

// ------------------------------------------------------------------------------------------ checks
void check_cuda_tensor(const char* op, const char* what, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, ": expected ", what, " on a CUDA device, got ", t.device());
  check_same_device(op, x, what, t);
}

void check_float_vector(const char* op, const char* what, const std::optional<at::Tensor>& v, int64_t n,
                        const at::Tensor& x) {
  if (!v.has_value()) return;
  TORCH_CHECK_TYPE(v->scalar_type() == at::kFloat, op, ": expected ", what, " of dtype float32, got ",
                   dtype_name(v->scalar_type()));
  TORCH_CHECK_VALUE(v->dim() == 1 && v->numel() == n, op, ": expected ", what, " of shape (", n, ",), got ",
                    shape_str(v->sizes()));
  check_same_device(op, x, what, *v);
}

at::ScalarType resolve_out_dtype(const at::Tensor& x, std::optional<at::ScalarType> out_dtype) {
  if (x.scalar_type() == at::kChar) {
    TORCH_CHECK_TYPE(out_dtype.has_value() && (*out_dtype == at::kHalf || *out_dtype == at::kBFloat16), kMmOp,
                     ": int8 x needs out_dtype float16 or bfloat16, got ",
                     out_dtype.has_value() ? dtype_name(*out_dtype) : std::string("None"));
    return *out_dtype;
  }
  TORCH_CHECK_TYPE(!out_dtype.has_value() || *out_dtype == x.scalar_type(), kMmOp, ": ",
                   dtype_name(x.scalar_type()), " x gives a ", dtype_name(x.scalar_type()),
                   " output, got out_dtype ", dtype_name(*out_dtype));
  return x.scalar_type();
}

// x as cuSPARSELt reads it: contiguous, 16-byte aligned, M padded (with zero rows) to the dtype's multiple.
at::Tensor dense_operand(const at::Tensor& x, int64_t m_pad) {
  const bool ready = x.is_contiguous() && reinterpret_cast<uintptr_t>(x.data_ptr()) % kAlignment == 0;
  if (ready && m_pad == x.size(0)) return x;
  auto padded = at::zeros({m_pad, x.size(1)}, x.options());
  padded.narrow(0, 0, x.size(0)).copy_(x);
  return padded;
}

// ------------------------------------------------------------------------------------------ ops
at::Tensor cslt_compress_cuda(const at::Tensor& weight) {
  const char* op = kCompressOp;
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": expected a weight of shape (out_features, in_features), got shape ",
                    shape_str(weight.sizes()));
  TORCH_CHECK_TYPE(supported_input(weight.scalar_type()), op,
                   ": expected a weight of dtype float16, bfloat16 or int8, got ", dtype_name(weight.scalar_type()));
  TORCH_CHECK_VALUE(weight.is_cuda(), op, ": expected a weight on a CUDA device, got ", weight.device());
  const int64_t N = weight.size(0), K = weight.size(1);
  check_nk(op, N, K, weight.scalar_type());
  const c10::cuda::CUDAGuard guard(weight.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(weight.get_device()).stream();
  // The 2:4 check reads its verdict back (a device sync), which a CUDA graph capture forbids: compress
  // at conversion, before capturing (sparsekit's formats do), never inside a captured forward.
  TORCH_CHECK(!capturing(stream), op, ": compressing a weight syncs the device, which CUDA graph capture ",
              "forbids; compress (convert the model) before capturing");
  // contiguous, and 16-byte aligned (a contiguous view can start anywhere in its storage)
  at::Tensor w = weight.contiguous();
  if (!cslt_aligned(w.data_ptr())) w = w.clone();
  const HandlePtr handle = handles().get(weight.get_device());
  const cusparseLtHandle_t* h = handle.get();
  MatDesc a;
  a.init_structured(h, N, K, rule_of(op, weight.scalar_type()).type);

  // One device sync, once per weight: compressing a weight that is not 2:4 would silently drop values.
  auto flag = at::empty({1}, w.options().dtype(at::kInt));
  const bool is_24 = prune_check_passes(
      flag.data_ptr<int>(), [&](int*) { flag.zero_(); },
      [&](int* f) {
        CSLT(cusparseLtSpMMAPruneCheck2, h, a.get(), 1, CUSPARSE_OPERATION_NON_TRANSPOSE, w.data_ptr(), f, stream);
      },
      [&](int*) { return flag.item<int>(); });
  TORCH_CHECK_VALUE(is_24, op, ": the weight is not 2:4 along in_features (a group of four ",
                    "columns keeps more than two non-zeros); prune it with pattern='2:4' first");

  size_t buffer_bytes = 0;
  const size_t bytes = compressed_bytes(h, a, &buffer_bytes);
  auto out = at::empty({static_cast<int64_t>(bytes)}, w.options().dtype(at::kByte));
  auto buffer = workspace_for(buffer_bytes, w);
  CSLT(cusparseLtSpMMACompress2, h, a.get(), 1, CUSPARSE_OPERATION_NON_TRANSPOSE, w.data_ptr(), out.data_ptr(),
       buffer.numel() ? buffer.data_ptr() : nullptr, stream);
  return out;
}

at::Tensor cslt_mm_cuda(const at::Tensor& x, const at::Tensor& compressed, int64_t out_features,
                        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha,
                        const std::optional<at::Tensor>& row_scale, std::optional<at::ScalarType> out_dtype) {
  const char* op = kMmOp;
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": expected x of shape (M, in_features), got shape ", shape_str(x.sizes()));
  TORCH_CHECK_TYPE(supported_input(x.scalar_type()), op, ": expected x of dtype float16, bfloat16 or int8, got ",
                   dtype_name(x.scalar_type()));
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": expected x on a CUDA device, got ", x.device());
  const int64_t M = x.size(0), K = x.size(1), N = out_features;
  check_nk(op, N, K, x.scalar_type());
  const at::ScalarType out = resolve_out_dtype(x, out_dtype);
  TORCH_CHECK_TYPE(compressed.scalar_type() == at::kByte && compressed.dim() == 1 && compressed.is_contiguous(), op,
                   ": expected compressed as returned by cslt_compress (contiguous 1-d uint8), got ",
                   dtype_name(compressed.scalar_type()), " of shape ", shape_str(compressed.sizes()));
  check_cuda_tensor(op, "compressed", compressed, x);
  TORCH_CHECK_VALUE(cslt_aligned(compressed.data_ptr()), op, ": expected compressed 16-byte aligned (as ",
                    "cslt_compress returns it), got a view at an offset of ",
                    reinterpret_cast<uintptr_t>(compressed.data_ptr()) % kAlignment, " bytes");
  check_bias(op, bias, N, out, x);
  check_float_vector(op, "alpha", alpha, N, x);
  TORCH_CHECK_VALUE(!row_scale.has_value() || x.scalar_type() == at::kChar, op,
                    ": row_scale (the per-token scale of W8A8) is for int8 x only");
  check_float_vector(op, "row_scale", row_scale, M, x);

  if (M == 0) return at::empty({0, N}, x.options().dtype(out));

  const c10::cuda::CUDAGuard guard(x.device());
  const bool int8 = x.scalar_type() == at::kChar;
  const int64_t m_pad = round_up(M, rule_of(op, x.scalar_type()).m_multiple);
  // undefined tensors for "none" (GCC warns, wrongly, of optional<Tensor> built in a conditional)
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  // int8: the bias comes after the per-token scale, in the epilogue (see scale_epilogue_kernel.cuh).
  // A bias view that is not 16-byte aligned is not fused (its pointer is part of the plan, so a copy
  // per call would build a plan per call): it is added after the matmul instead.
  const bool fuse_bias = bias_c.defined() && !int8 && cslt_aligned(bias_c.data_ptr());
  at::Tensor alpha_c = alpha.has_value() ? alpha->contiguous() : at::Tensor();
  if (alpha_c.defined() && !cslt_aligned(alpha_c.data_ptr())) alpha_c = alpha_c.clone();  // read at run time

  PlanKey key;
  key.device = x.get_device();
  key.n = N, key.k = K, key.m = m_pad, key.in = x.scalar_type(), key.out = out;
  key.alpha_vector = alpha_c.defined();
  key.bias = fuse_bias ? reinterpret_cast<uintptr_t>(bias_c.data_ptr()) : 0;
  std::shared_ptr<Plan> plan = plan_cache().get(key);
  TORCH_CHECK_VALUE(static_cast<size_t>(compressed.numel()) == plan->compressed, op, ": expected compressed of ",
                    plan->compressed, " bytes (cslt_compress of a ", N, " x ", K, " ", dtype_name(x.scalar_type()),
                    " weight), got ", compressed.numel());

  auto y = at::empty({m_pad, N}, x.options().dtype(out));
  const auto b = dense_operand(x, m_pad);
  const float one = 1.f;
  const MatmulArgs args{alpha_c.defined() ? alpha_c.data_ptr() : static_cast<const void*>(&one),
                        compressed.data_ptr(), b.data_ptr(), y.data_ptr()};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(key.device).stream();
  if (plan->tuned.load())
    enqueue(*plan, args, x, stream);
  else
    tune_and_enqueue(*plan, key, args, x, stream);

  if (bias_c.defined() && !int8 && !fuse_bias) y.narrow(0, 0, M).add_(bias_c);
  if (int8 && (row_scale.has_value() || bias_c.defined())) {
    const at::Tensor rs = row_scale.has_value() ? row_scale->contiguous() : at::Tensor();
    const cudaError_t err = scale_rows_add_bias(y.data_ptr(), M, N, out == at::kBFloat16 ? DType::bf16 : DType::f16,
                                                rs.defined() ? rs.data_ptr<float>() : nullptr,
                                                bias_c.defined() ? bias_c.data_ptr() : nullptr, stream);
    TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch of the epilogue failed: ", cudaGetErrorString(err));
  }
  return m_pad == M ? y : y.narrow(0, 0, M);
}

std::string version_string(int major, int minor, int patch) {
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

}  // namespace

CusparseLtStats cusparselt_stats() { return plan_cache().stats(); }

void cusparselt_release() {
  plan_cache().clear();      // plans in use by other threads live on in their shared_ptr ...
  handles().release_all();  // ... and so do their handles: each is destroyed with its last plan
}

std::string cusparselt_build_version() {
  return version_string(CUSPARSELT_VER_MAJOR, CUSPARSELT_VER_MINOR, CUSPARSELT_VER_PATCH);
}

std::string cusparselt_loaded_version() {
  int v[3] = {0, 0, 0};
  const libraryPropertyType props[3] = {MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL};
  for (int i = 0; i < 3; ++i)
    if (cusparseLtGetProperty(props[i], &v[i]) != CUSPARSE_STATUS_SUCCESS) return "unknown";
  return version_string(v[0], v[1], v[2]);
}

}  // namespace cuda
}  // namespace sparsekit

TORCH_LIBRARY_IMPL(sparsekit, CUDA, m) {
  m.impl("cslt_compress", &sparsekit::cuda::cslt_compress_cuda);
  m.impl("cslt_mm", &sparsekit::cuda::cslt_mm_cuda);
}
