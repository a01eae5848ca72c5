// Runs the csrc/cuda launchers on the CPU emulator for tests/test_cuda_emulated.py.
//
//   driver CASE_DIR...
//
// Each case directory holds spec.txt (lines "key value": op, dtype, sizes; "buf NAME OFFSET" for each
// input buffer, read from NAME.bin) and the input files; the driver writes each output buffer to
// NAME.out and the launcher's return code to status.txt. Every buffer is a heap block of exactly its
// size (AddressSanitizer checks every access), placed OFFSET bytes past a 16-byte boundary so that
// tests can misalign it; outputs and workspaces start filled with 0xff bytes (NaN), so an output the
// kernels never write shows up.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/bitmap_kernel.cuh"
#include "cuda/bsr_kernel.cuh"
#include "cuda/csr_spmm_kernel.cuh"
#include "cuda/int8_wo_kernel.cuh"
#include "cuda/w8a8_kernel.cuh"
#include "cuda/mma_sync.cuh"
#include "cuda/pack_kernel.cuh"
#include "cuda/scale_epilogue_kernel.cuh"
#include "cuda/sparse24_kernel.cuh"

#if defined(__SANITIZE_ADDRESS__)
extern "C" void __asan_poison_memory_region(void const volatile* addr, size_t size);
#define POISON(p, n) __asan_poison_memory_region(p, n)
#else
#define POISON(p, n) ((void)0)
#endif

using namespace sparsekit::cuda;

namespace {

[[noreturn]] void die(const std::string& m) {
  std::fprintf(stderr, "driver: %s\n", m.c_str());
  std::exit(2);
}

struct Buf {
  unsigned char* base = nullptr;  // what was allocated
  unsigned char* p = nullptr;     // the buffer (base + offset)
  size_t bytes = 0;
};

// A heap block of exactly offset + bytes, 16-byte aligned; the offset bytes before the buffer are
// poisoned where AddressSanitizer's 8-byte granules allow.
Buf alloc(size_t bytes, size_t offset, int fill) {
  Buf b;
  void* m = nullptr;
  if (posix_memalign(&m, 16, offset + bytes) != 0) die("out of memory");
  b.base = static_cast<unsigned char*>(m);
  b.p = b.base + offset;
  b.bytes = bytes;
  if (fill >= 0) std::memset(b.p, fill, bytes);
  if (offset >= 8) POISON(b.base, offset & ~size_t(7));
  return b;
}

struct Case {
  std::string dir;
  std::map<std::string, std::string> kv;
  std::map<std::string, Buf> in;
  std::vector<std::pair<std::string, Buf>> out;

  bool has(const std::string& k) const { return kv.count(k) != 0; }
  int64_t i(const std::string& k) const {
    auto it = kv.find(k);
    if (it == kv.end()) die(dir + ": spec has no " + k);
    return std::stoll(it->second);
  }
  std::string s(const std::string& k) const {
    auto it = kv.find(k);
    if (it == kv.end()) die(dir + ": spec has no " + k);
    return it->second;
  }
  const Buf* buf(const std::string& name, bool required = true) const {
    auto it = in.find(name);
    if (it == in.end()) {
      if (required) die(dir + ": no input buffer " + name);
      return nullptr;
    }
    return &it->second;
  }
  const void* ptr(const std::string& name) const {
    const Buf* b = buf(name, false);
    return b ? b->p : nullptr;
  }
  void* mut(const std::string& name) const {
    const Buf* b = buf(name);
    return b->p;
  }
  unsigned char* output(const std::string& name, size_t bytes, int fill = 0xff) {
    out.emplace_back(name, alloc(bytes, 0, fill));
    return out.back().second.p;
  }
  // an input buffer also written back (in-place kernels)
  void output_inplace(const std::string& name) { out.emplace_back(name, *buf(name)); }
};

Case load(const std::string& dir) {
  Case c;
  c.dir = dir;
  std::ifstream f(dir + "/spec.txt");
  if (!f) die("cannot read " + dir + "/spec.txt");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream ls(line);
    std::string k, v;
    if (!(ls >> k)) continue;
    if (k == "buf") {
      std::string name;
      size_t off = 0;
      ls >> name >> off;
      std::ifstream bf(dir + "/" + name + ".bin", std::ios::binary);
      if (!bf) die("cannot read " + dir + "/" + name + ".bin");
      std::vector<char> data((std::istreambuf_iterator<char>(bf)), std::istreambuf_iterator<char>());
      Buf b = alloc(data.size(), off, -1);
      if (!data.empty()) std::memcpy(b.p, data.data(), data.size());
      c.in[name] = b;
    } else {
      ls >> v;
      c.kv[k] = v;
    }
  }
  return c;
}

DType dtype_of(const std::string& s) {
  if (s == "f32") return DType::f32;
  if (s == "f16") return DType::f16;
  if (s == "bf16") return DType::bf16;
  die("unknown dtype " + s);
}
size_t dtype_size(DType d) { return d == DType::f32 ? 4 : 2; }

template <typename Launch>
void set_io(Case& c, Launch& a) {
  a.M = c.i("M");
  a.N = c.i("N");
  a.K = c.i("K");
  a.dtype = dtype_of(c.s("dtype"));
  a.x = c.ptr("x");
  a.ldx = c.i("ldx");
  a.bias = c.ptr("bias");
  a.ldy = a.N;
  a.y = c.output("y", static_cast<size_t>(a.M * a.N) * dtype_size(a.dtype));
}

// The split-K workspace the launcher asks for, exactly sized and poisoned (null when none).
template <typename Launch>
void* workspace(Case& c, const Launch& a, size_t (*bytes_fn)(const Launch&, cudaError_t*)) {
  cudaError_t e = cudaSuccess;
  const size_t bytes = bytes_fn(a, &e);
  if (e != cudaSuccess) die(c.dir + ": workspace_bytes failed");
  std::FILE* f = std::fopen((c.dir + "/workspace.txt").c_str(), "w");
  if (f) {
    std::fprintf(f, "%zu\n", bytes);
    std::fclose(f);
  }
  if (!bytes) return nullptr;
  Buf b = alloc(bytes, 0, 0xff);
  return b.p;
}

// The exclusive sum the bindings compute with at::cumsum.
template <typename O, typename I>
std::vector<O> exclusive_sum(const I* v, int64_t n, int64_t* total) {
  std::vector<O> r(static_cast<size_t>(n));
  int64_t s = 0;
  for (int64_t i = 0; i < n; ++i) {
    r[i] = static_cast<O>(s);
    s += v[i];
  }
  *total = s;
  return r;
}

Buf copy_in(const void* src, size_t bytes) {
  Buf b = alloc(bytes, 0, -1);
  if (bytes) std::memcpy(b.p, src, bytes);
  return b;
}

// One warp: A (16 x 16, row-major) and B (16 x 8, row-major: B[k][n]) of 16-bit elements into the m16n8k16
// fragments exactly as the PTX ISA lays them out (written here independently of the kernels), one
// mma_16816, D (16 x 8 float32, row-major) out. Pins the emulated mma to the documented contract.
template <typename T>
__global__ void mma_probe_kernel(const uint16_t* A, const uint16_t* B, float* D) {
  const int lane = static_cast<int>(threadIdx.x);
  const int g = lane / 4, t = lane % 4;
  auto pair = [](const uint16_t* p, int lo, int hi) { return uint32_t(p[lo]) | (uint32_t(p[hi]) << 16); };
  const uint32_t a[4] = {pair(A, g * 16 + 2 * t, g * 16 + 2 * t + 1),
                         pair(A, (g + 8) * 16 + 2 * t, (g + 8) * 16 + 2 * t + 1),
                         pair(A, g * 16 + 2 * t + 8, g * 16 + 2 * t + 9),
                         pair(A, (g + 8) * 16 + 2 * t + 8, (g + 8) * 16 + 2 * t + 9)};
  const uint32_t b[2] = {pair(B, (2 * t) * 8 + g, (2 * t + 1) * 8 + g), pair(B, (2 * t + 8) * 8 + g, (2 * t + 9) * 8 + g)};
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  sparsekit::cuda::decode::mma_16816<T>(d, a, b);
  D[g * 8 + 2 * t] = d[0];
  D[g * 8 + 2 * t + 1] = d[1];
  D[(g + 8) * 8 + 2 * t] = d[2];
  D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

cudaError_t run(Case& c) {
  const std::string op = c.s("op");
  cudaStream_t stream = nullptr;
  if (op == "sparse24_mm") {
    Sparse24MmLaunch a;
    set_io(c, a);
    a.values = c.ptr("values");
    a.meta = static_cast<const uint8_t*>(c.ptr("meta"));
    void* ws = workspace(c, a, &sparse24_mm_workspace_bytes);
    return sparse24_mm(a, ws, stream);
  }
  if (op == "bitmap_mm") {
    BitmapMmLaunch a;
    set_io(c, a);
    a.bitmap = static_cast<const int32_t*>(c.ptr("bitmap"));
    a.word_offsets = static_cast<const int32_t*>(c.ptr("word_offsets"));
    a.values = c.ptr("values");
    a.nnz = c.i("nnz");
    a.columns = static_cast<const uint16_t*>(c.ptr("columns"));  // optional: the column-list kernel
    void* ws = workspace(c, a, &bitmap_mm_workspace_bytes);
    return bitmap_mm(a, ws, stream);
  }
  if (op == "int8_wo_mm") {
    Int8WoMmLaunch a;
    set_io(c, a);
    a.w_q = static_cast<const int8_t*>(c.ptr("w_q"));
    a.w_scale = static_cast<const float*>(c.ptr("w_scale"));
    cudaError_t e = cudaSuccess;  // a refused launch (float32, below sm_80) is refused by the query too
    int8_wo_mm_workspace_bytes(a, &e);
    if (e != cudaSuccess) return e;
    void* ws = workspace(c, a, &int8_wo_mm_workspace_bytes);
    return int8_wo_mm(a, ws, stream);
  }
  if (op == "w8a8_mm" || op == "w8a8_linear") {  // int8 x_q (M, K) with its scales (w8a8_linear: float x,
    W8A8MmLaunch a;                               // quantized inside); a dense int8 weight, or 2:4 (meta given)
    set_io(c, a);  // dtype: the output's (and w8a8_linear's x's)
    a.quantize = op == "w8a8_linear";
    a.x_scale = a.quantize ? nullptr : static_cast<const float*>(c.ptr("x_scale"));
    a.w = c.ptr("w");
    a.meta = static_cast<const uint8_t*>(c.ptr("meta"));
    a.w_scale = static_cast<const float*>(c.ptr("w_scale"));
    cudaError_t e = cudaSuccess;
    w8a8_mm_workspace_bytes(a, &e);
    if (e != cudaSuccess) return e;
    void* ws = workspace(c, a, &w8a8_mm_workspace_bytes);
    return w8a8_mm(a, ws, stream);
  }
  if (op == "quantize_per_token") {  // the standalone per-token quantization: q (M, K) int8 and scale (M,)
    const int64_t M = c.i("M"), K = c.i("K");
    return quantize_per_token_rows(c.ptr("x"), c.i("ldx"), M, K, dtype_of(c.s("dtype")),
                                   reinterpret_cast<int8_t*>(c.output("q", static_cast<size_t>(M * K))),
                                   reinterpret_cast<float*>(c.output("scale", static_cast<size_t>(M) * 4)), stream);
  }
  if (op == "bsr_mm") {
    BsrMmLaunch a;
    set_io(c, a);
    a.R = c.i("R");
    a.C = c.i("C");
    a.crow = static_cast<const int32_t*>(c.ptr("crow"));
    a.col = static_cast<const int32_t*>(c.ptr("col"));
    a.values = c.ptr("values");
    void* ws = workspace(c, a, &bsr_mm_workspace_bytes);
    return bsr_mm(a, ws, stream);
  }
  if (op == "bsr_plan") {  // whether bsr_mm would take the tensor-core path (nothing runs): 1 or 0, int32
    BsrMmLaunch a;
    a.M = c.i("M"); a.N = c.i("N"); a.K = c.i("K"); a.R = c.i("R"); a.C = c.i("C");
    a.dtype = dtype_of(c.s("dtype"));
    *reinterpret_cast<int32_t*>(c.output("uses", 4)) = bsr_mm_uses_tensor_cores(a) ? 1 : 0;
    return cudaSuccess;
  }
  if (op == "csr_mm") {
    CsrMmLaunch a;
    set_io(c, a);
    a.crow = static_cast<const int32_t*>(c.ptr("crow"));
    a.col = static_cast<const int32_t*>(c.ptr("col"));
    a.values = c.ptr("values");
    return csr_mm(a, stream);
  }
  if (op == "scale_epilogue") {
    const int64_t M = c.i("M"), N = c.i("N");
    c.output_inplace("y");
    return scale_rows_add_bias(c.mut("y"), M, N, dtype_of(c.s("dtype")), static_cast<const float*>(c.ptr("row_scale")),
                               c.ptr("bias"), stream);
  }
  if (op == "mma_probe") {
    const auto* A = static_cast<const uint16_t*>(c.ptr("A"));
    const auto* B = static_cast<const uint16_t*>(c.ptr("B"));
    auto* D = reinterpret_cast<float*>(c.output("D", 16 * 8 * 4));
    if (c.s("dtype") == "bf16") {
      ::cuda_emu::launch(mma_probe_kernel<__nv_bfloat16>, ::cuda_emu::Cfg(1, 32), A, B, D);
    } else {
      ::cuda_emu::launch(mma_probe_kernel<__half>, ::cuda_emu::Cfg(1, 32), A, B, D);
    }
    return cudaGetLastError();
  }
  if (op == "convert") {  // the emulator's own half / bfloat16 conversions, checked against torch's
    const Buf* f = c.buf("f");
    const Buf* bits = c.buf("bits");
    const size_t nf = f->bytes / 4, nb = bits->bytes / 2;
    auto* h = reinterpret_cast<__half*>(c.output("f2h", nf * 2));
    auto* b = reinterpret_cast<__nv_bfloat16*>(c.output("f2b", nf * 2));
    auto* h2f = reinterpret_cast<float*>(c.output("h2f", nb * 4));
    auto* b2f = reinterpret_cast<float*>(c.output("b2f", nb * 4));
    for (size_t i = 0; i < nf; ++i) {
      float v;
      std::memcpy(&v, f->p + 4 * i, 4);
      h[i] = __float2half_rn(v);
      b[i] = __float2bfloat16_rn(v);
    }
    for (size_t i = 0; i < nb; ++i) {
      uint16_t u;
      std::memcpy(&u, bits->p + 2 * i, 2);
      h2f[i] = __half2float(__half{u});
      b2f[i] = __bfloat162float(__nv_bfloat16{u});
    }
    return cudaSuccess;
  }
  const int64_t N = c.i("N"), K = c.i("K");
  if (op == "pack_sparse24") {
    const int es = static_cast<int>(c.i("elem_size"));
    void* values = c.output("values", static_cast<size_t>(N * (K / 2) * es));
    uint8_t* meta = c.output("meta", static_cast<size_t>(N * ((K + 7) / 8)));
    auto* bad = reinterpret_cast<unsigned long long*>(c.output("bad", 8, 0xff));  // ~0ull, as the binding's -1
    return pack_sparse24(c.ptr("weight"), static_cast<const uint8_t*>(c.ptr("mask")), N, K, es, values, meta, bad,
                         stream);
  }
  if (op == "pack_bitmap" || op == "pack_csr") {
    const int es = static_cast<int>(c.i("elem_size"));
    const int64_t W = (K + 31) / 32;
    auto* bitmap = reinterpret_cast<int32_t*>(c.output("bitmap", static_cast<size_t>(N * W) * 4));
    Buf counts = alloc(static_cast<size_t>(N * W) * 4, 0, 0xff);
    cudaError_t e = pack_bitmap_words(static_cast<const uint8_t*>(c.ptr("mask")), N, K, bitmap,
                                      reinterpret_cast<int32_t*>(counts.p), stream);
    if (e != cudaSuccess) return e;
    int64_t nnz = 0;
    const auto* cnt = reinterpret_cast<const int32_t*>(counts.p);
    const std::vector<int32_t> offs = exclusive_sum<int32_t>(cnt, N * W, &nnz);
    auto* offsets = reinterpret_cast<int32_t*>(c.output("word_offsets", offs.size() * 4));
    if (!offs.empty()) std::memcpy(offsets, offs.data(), offs.size() * 4);
    void* values = c.output("values", static_cast<size_t>(nnz) * es);
    int32_t* cols = nullptr;
    if (op == "pack_csr") {
      cols = reinterpret_cast<int32_t*>(c.output("col", static_cast<size_t>(nnz) * 4));
      auto* crow = reinterpret_cast<int32_t*>(c.output("crow", static_cast<size_t>(N + 1) * 4));
      int64_t s = 0;
      crow[0] = 0;
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t w = 0; w < W; ++w) s += cnt[n * W + w];
        crow[n + 1] = static_cast<int32_t>(s);
      }
    }
    return pack_scatter_kept(c.ptr("weight"), bitmap, offsets, N, K, es, values, cols, stream);
  }
  if (op == "pack_bsr") {
    const int es = static_cast<int>(c.i("elem_size"));
    const int64_t R = c.i("R"), C = c.i("C"), NB = N / R, KB = K / C;
    Buf flags = alloc(static_cast<size_t>(NB * KB) * 4, 0, 0xff);
    cudaError_t e = pack_bsr_flags(static_cast<const uint8_t*>(c.ptr("mask")), N, K, R, C,
                                   reinterpret_cast<int32_t*>(flags.p), stream);
    if (e != cudaSuccess) return e;
    const auto* fl = reinterpret_cast<const int32_t*>(flags.p);
    int64_t nblocks = 0;
    const std::vector<int64_t> pos = exclusive_sum<int64_t>(fl, NB * KB, &nblocks);
    Buf positions = copy_in(pos.data(), pos.size() * 8);
    auto* crow = reinterpret_cast<int32_t*>(c.output("crow", static_cast<size_t>(NB + 1) * 4));
    int64_t s = 0;
    crow[0] = 0;
    for (int64_t r = 0; r < NB; ++r) {
      for (int64_t k = 0; k < KB; ++k) s += fl[r * KB + k];
      crow[r + 1] = static_cast<int32_t>(s);
    }
    auto* cols = reinterpret_cast<int32_t*>(c.output("col", static_cast<size_t>(nblocks) * 4));
    Buf brows = alloc(static_cast<size_t>(nblocks) * 4, 0, 0xff);
    void* values = c.output("values", static_cast<size_t>(nblocks * R * C) * es);
    if (nblocks == 0) return cudaSuccess;
    e = pack_bsr_index(fl, reinterpret_cast<const int64_t*>(positions.p), NB, KB, cols,
                       reinterpret_cast<int32_t*>(brows.p), stream);
    if (e != cudaSuccess) return e;
    return pack_bsr_values(c.ptr("weight"), static_cast<const uint8_t*>(c.ptr("mask")), K, R, C, cols,
                           reinterpret_cast<const int32_t*>(brows.p), nblocks, es, values, stream);
  }
  die("unknown op " + op);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::fprintf(stderr, "CASE %s\n", argv[i]);
    Case c = load(argv[i]);
    cudaError_t e = run(c);
    const cudaError_t last = cudaGetLastError();
    if (e == cudaSuccess) e = last;
    {
      std::ofstream st(c.dir + "/status.txt");
      st << static_cast<int>(e) << " " << cudaGetErrorString(e) << "\n";
    }
    for (auto& [name, b] : c.out) {
      std::ofstream of(c.dir + "/" + name + ".out", std::ios::binary);
      of.write(reinterpret_cast<const char*>(b.p), static_cast<std::streamsize>(b.bytes));
    }
  }
  return 0;
}
