// The emulator's runtime: fibers, the block scheduler, barriers and warp collectives, the device
// properties / occupancy / function attributes the launch code asks for. See cuda_emu.h.
#include "cuda_emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <map>
#include <random>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif

#ifdef EMU_ASAN
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
}
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace cuda_emu {

// ------------------------------------------------------------------------------------ errors, knobs
static cudaError_t g_last_error = cudaSuccess;

void set_last_error(cudaError_t e) {
  if (e != cudaSuccess) g_last_error = e;
}

void fail(const char* fmt, ...) {
  std::fflush(stdout);
  std::fprintf(stderr, "EMU ERROR: ");
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::_Exit(86);
}

static int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : dflt;
}

const Knobs& knobs() {
  static const Knobs k = [] {
    Knobs k;
    k.sms = env_int("EMU_SMS", k.sms);
    k.smem_optin = env_int("EMU_SMEM_OPTIN", k.smem_optin);
    k.smem_per_sm = env_int("EMU_SMEM_PER_SM", k.smem_per_sm);
    k.cc_major = env_int("EMU_CC_MAJOR", k.cc_major);
    k.seed = static_cast<unsigned>(env_int("EMU_SEED", static_cast<int>(k.seed)));
    const char* s = std::getenv("EMU_SCHEDULE");
    if (s && std::string(s) == "forward") k.schedule = 1;
    if (s && std::string(s) == "reverse") k.schedule = 2;
    if (s && std::string(s) == "fair") k.schedule = 3;
    return k;
  }();
  return k;
}

// ------------------------------------------------------------------------------------ fibers
enum State : int { kRunnable, kWaitBlock, kWaitWarp, kDone };

struct Thread {
  void* sp = nullptr;  // saved stack pointer (x86-64) while switched out
#if !defined(__x86_64__)
  ucontext_t uc;
#endif
  unsigned char* stack = nullptr;  // usable stack [stack, stack + kStackBytes)
  uint3 tid{0, 0, 0};
  int linear = 0;
  State state = kRunnable;
  // the collective this thread waits at
  Kind kind = kSyncwarp;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int arg = 0, width = 32;
  const char* what = "";
};

Thread* g_cur = nullptr;
dim3 g_block_idx, g_block_dim, g_grid_dim;

static constexpr size_t kStackBytes = 256 * 1024;
static constexpr size_t kGuard = 4096;
static std::vector<Thread> g_threads;
static void* g_sched_sp = nullptr;  // the scheduler's saved stack pointer
#if !defined(__x86_64__)
static ucontext_t g_sched_uc;
#endif
static Body g_body = nullptr;
static void* g_ctx = nullptr;
static unsigned char* g_smem = nullptr;
static size_t g_smem_bytes = 0;
static const void* g_sched_stack_bottom = nullptr;
static size_t g_sched_stack_size = 0;

const uint3& cur_tid() {
  if (!g_cur) fail("threadIdx read outside a kernel");
  return g_cur->tid;
}

void* dynamic_smem() {
  if (!g_cur) fail("dynamic shared memory used outside a kernel");
  return g_smem;
}

#if defined(__x86_64__)
extern "C" void cuda_emu_switch(void** save_sp, void* new_sp);
asm(R"(
.text
.globl cuda_emu_switch
.type cuda_emu_switch,@function
cuda_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size cuda_emu_switch,.-cuda_emu_switch
.section .note.GNU-stack,"",@progbits
.text
)");
#endif

// Switches from the scheduler into fiber t (returns when t yields or finishes).
static void enter(Thread* t) {
  g_cur = t;
#ifdef EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, t->stack, kStackBytes);
#endif
#if defined(__x86_64__)
  cuda_emu_switch(&g_sched_sp, t->sp);
#else
  swapcontext(&g_sched_uc, &t->uc);
#endif
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  g_cur = nullptr;
}

// Switches from the running fiber back to the scheduler (returns when the scheduler resumes it).
static void yield_to_scheduler(bool finished) {
  Thread* t = g_cur;
#ifdef EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(finished ? nullptr : &fake, g_sched_stack_bottom, g_sched_stack_size);
#endif
#if defined(__x86_64__)
  cuda_emu_switch(&t->sp, g_sched_sp);
#else
  swapcontext(&t->uc, &g_sched_uc);
#endif
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, &g_sched_stack_bottom, &g_sched_stack_size);
#endif
  (void)finished;
}

extern "C" __attribute__((noreturn)) void cuda_emu_fiber_main() {
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_sched_stack_bottom, &g_sched_stack_size);
#endif
  g_body(g_ctx);
  g_cur->state = kDone;
  yield_to_scheduler(true);
  fail("a finished fiber was resumed");
}

static void init_fiber(Thread* t) {
  if (!t->stack) {
    void* m = mmap(nullptr, kStackBytes + kGuard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) fail("mmap of a fiber stack failed");
    mprotect(m, kGuard, PROT_NONE);  // overflow guard
    t->stack = static_cast<unsigned char*>(m) + kGuard;
  }
#if defined(__x86_64__)
  uintptr_t top = reinterpret_cast<uintptr_t>(t->stack + kStackBytes) & ~static_cast<uintptr_t>(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                                                // fake return address of fiber_main
  *--sp = reinterpret_cast<void*>(&cuda_emu_fiber_main);          // where the first switch "returns"
  for (int i = 0; i < 6; ++i) *--sp = nullptr;                    // rbp rbx r12 r13 r14 r15
  t->sp = sp;
#else
  getcontext(&t->uc);
  t->uc.uc_stack.ss_sp = t->stack;
  t->uc.uc_stack.ss_size = kStackBytes;
  t->uc.uc_link = nullptr;
  makecontext(&t->uc, reinterpret_cast<void (*)()>(&cuda_emu_fiber_main), 0);
#endif
}

// ------------------------------------------------------------------------------------ barriers
static const char* state_name(const Thread& t) {
  switch (t.state) {
    case kRunnable: return "runnable";
    case kWaitBlock: return "waits at __syncthreads";
    case kWaitWarp: return t.what;
    case kDone: return "exited";
  }
  return "?";
}

static std::string where() {
  char b[160];
  std::snprintf(b, sizeof b, "block (%u, %u, %u) of grid (%u, %u, %u), %u threads", g_block_idx.x, g_block_idx.y,
                g_block_idx.z, g_grid_dim.x, g_grid_dim.y, g_grid_dim.z, g_block_dim.x * g_block_dim.y * g_block_dim.z);
  return b;
}

void sync_block(const char* what) {
  Thread* t = g_cur;
  if (!t) fail("%s outside a kernel", what);
  t->state = kWaitBlock;
  t->what = what;
  yield_to_scheduler(false);
}

uint64_t warp_collective(Kind kind, unsigned mask, uint64_t value, int arg, int width, const char* what) {
  Thread* t = g_cur;
  if (!t) fail("%s outside a kernel", what);
  const int lane = t->linear & 31;
  if (!((mask >> lane) & 1u))
    fail("%s(mask 0x%08x) called by lane %d, which is not in its mask; thread %d, %s", what, mask, lane, t->linear,
         where().c_str());
  if (width <= 0 || width > 32 || (width & (width - 1)))
    fail("%s with width %d (must be a power of two <= 32)", what, width);
  t->state = kWaitWarp;
  t->kind = kind;
  t->mask = mask;
  t->value = value;
  t->arg = arg;
  t->width = width;
  t->what = what;
  yield_to_scheduler(false);
  return t->result;
}

// The warp of thread t: tries to complete the collective t waits at. Errors on a lane of the mask
// that exited or waits at another collective.
static void try_complete_warp(Thread* t) {
  const int nthreads = static_cast<int>(g_threads.size());
  const int base = t->linear & ~31;
  const unsigned mask = t->mask;
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    const int i = base + l;
    if (i >= nthreads)
      fail("%s(mask 0x%08x) names lane %d, which does not exist (block of %d threads); %s", t->what, mask, l, nthreads,
           where().c_str());
    const Thread& o = g_threads[i];
    if (o.state == kDone)
      fail("%s(mask 0x%08x): lane %d of warp %d exited while lane %d waits for it; %s", t->what, mask, l, base / 32,
           t->linear & 31, where().c_str());
    if (o.state == kRunnable || o.state == kWaitBlock) return;  // not there yet (a deadlock is found later)
    if (o.kind != t->kind || o.mask != mask) {
      // lanes that named each other wait at different collectives: they can never meet
      if ((o.mask >> (t->linear & 31)) & 1u)
        fail("warp %d diverged: lane %d waits at %s(mask 0x%08x), lane %d at %s(mask 0x%08x); %s", base / 32,
             t->linear & 31, t->what, mask, l, o.what, o.mask, where().c_str());
      return;
    }
  }
  // complete: every lane of the mask is here
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    Thread& o = g_threads[base + l];
    const int w = o.width, seg = l & ~(w - 1), li = l & (w - 1);
    int src = l;
    switch (o.kind) {
      case kShflIdx: src = seg + (o.arg & (w - 1)); break;
      case kShflUp: src = li >= o.arg ? l - o.arg : l; break;
      case kShflDown: src = li + o.arg < w ? l + o.arg : l; break;
      case kShflXor: {
        const int s = l ^ o.arg;
        src = (s >= seg && s < seg + w) ? s : l;
        break;
      }
      default: break;
    }
    switch (o.kind) {
      case kSyncwarp: o.result = 0; break;
      case kShflIdx: case kShflUp: case kShflDown: case kShflXor:
        if (!((mask >> src) & 1u))
          fail("%s(mask 0x%08x): lane %d reads lane %d, which is not in the mask; %s", o.what, mask, l, src,
               where().c_str());
        o.result = g_threads[base + src].value;
        break;
      case kBallot: case kAny: case kAll: {
        unsigned bits = 0;
        for (int k = 0; k < 32; ++k)
          if (((mask >> k) & 1u) && g_threads[base + k].value) bits |= 1u << k;
        o.result = o.kind == kBallot ? bits : o.kind == kAny ? (bits != 0) : (bits == mask);
        break;
      }
    }
  }
  for (int l = 0; l < 32; ++l)
    if ((mask >> l) & 1u) g_threads[base + l].state = kRunnable;
}

static void try_complete_block() {
  for (const Thread& o : g_threads) {
    if (o.state == kDone)
      fail("__syncthreads: thread %d exited while others wait at the barrier; %s", o.linear, where().c_str());
    if (o.state != kWaitBlock) return;
  }
  for (Thread& o : g_threads) o.state = kRunnable;
}

[[noreturn]] static void deadlock() {
  std::string s;
  int shown = 0;
  for (const Thread& o : g_threads) {
    if (o.state == kDone) continue;
    if (shown++ < 40) {
      char b[160];
      std::snprintf(b, sizeof b, "\n  thread %d (warp %d lane %d): %s (mask 0x%08x)", o.linear, o.linear / 32,
                    o.linear & 31, state_name(o), o.mask);
      s += b;
    }
  }
  fail("deadlock: no thread can run; %s%s", where().c_str(), s.c_str());
}

// Runs thread t until it waits or exits, then completes what its arrival may complete.
static void step(Thread& t, int* done) {
  enter(&t);
  if (t.state == kDone) {
    ++*done;
  } else if (t.state == kWaitWarp) {
    try_complete_warp(&t);
  } else if (t.state == kWaitBlock) {
    try_complete_block();
  }
}

// The schedule. Default ("greedy"): the warps in a random order of priority; the first warp that has a
// runnable thread runs (its lanes in a random order, each to its next barrier) until all its lanes wait
// at __syncthreads or exit, then the next: a warp runs as far ahead of the others as the barriers let
// it, so a missing __syncthreads makes it read what other warps have not written yet; inside a warp a
// lane runs ahead of the others to its next __syncwarp or shuffle. "fair": every runnable thread runs
// to its next barrier in turn (forward / reverse: the same in thread order / reverse thread order).
static void run_block(std::mt19937& rng) {
  const int n = static_cast<int>(g_threads.size());
  for (int i = 0; i < n; ++i) {
    Thread& t = g_threads[i];
    t.state = kRunnable;
    t.linear = i;
    t.tid = uint3{static_cast<unsigned>(i % g_block_dim.x), static_cast<unsigned>((i / g_block_dim.x) % g_block_dim.y),
                  static_cast<unsigned>(i / (g_block_dim.x * g_block_dim.y))};
    init_fiber(&t);
  }
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  const int sched = knobs().schedule;
  if (sched == 0 || sched == 3) std::shuffle(order.begin(), order.end(), rng);
  if (sched == 2) std::reverse(order.begin(), order.end());
  const int nwarps = (n + 31) / 32;
  std::vector<int> warps(nwarps);
  for (int w = 0; w < nwarps; ++w) warps[w] = w;
  if (sched == 0) std::shuffle(warps.begin(), warps.end(), rng);
  int done = 0;
  while (done < n) {
    bool progress = false;
    if (sched == 0) {
      for (int w : warps) {
        bool ran = false;
        for (int i : order) {  // the lanes of warp w, in the block's random order
          if (i / 32 != w) continue;
          Thread& t = g_threads[i];
          if (t.state != kRunnable) continue;
          ran = true;
          step(t, &done);
        }
        if (ran) {
          progress = true;
          break;  // back to the warp of highest priority that can run
        }
      }
    } else {
      for (int i : order) {
        Thread& t = g_threads[i];
        if (t.state != kRunnable) continue;
        progress = true;
        step(t, &done);
      }
    }
    if (!progress) {
      // a lane that exited may be the reason a warp collective cannot complete: report that precisely
      for (Thread& t : g_threads)
        if (t.state == kWaitWarp) try_complete_warp(&t);
      for (Thread& t : g_threads)
        if (t.state == kWaitBlock) {
          try_complete_block();
          break;
        }
      bool any = false;
      for (Thread& t : g_threads) any |= t.state == kRunnable;
      if (!any) deadlock();
    }
  }
}

// ------------------------------------------------------------------------------------ launches
static std::map<const void*, int> g_max_dynamic_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize

static int max_dynamic_smem(const void* f) {
  auto it = g_max_dynamic_smem.find(f);
  return it == g_max_dynamic_smem.end() ? 48 * 1024 : it->second;
}

void run_grid(const void* kernel, const Cfg& cfg, Body body, void* ctx) {
  if (g_cur) fail("a kernel launched from inside a kernel");
  const dim3 g = cfg.grid, b = cfg.block;
  const uint64_t threads = static_cast<uint64_t>(b.x) * b.y * b.z;
  if (g.x == 0 || g.y == 0 || g.z == 0 || threads == 0 || threads > 1024 || b.z > 64 || g.x > 2147483647u ||
      g.y > 65535 || g.z > 65535) {
    std::fprintf(stderr, "EMU: invalid launch configuration grid (%u, %u, %u) block (%u, %u, %u)\n", g.x, g.y, g.z,
                 b.x, b.y, b.z);
    set_last_error(cudaErrorInvalidConfiguration);
    return;
  }
  if (cfg.smem > static_cast<size_t>(max_dynamic_smem(kernel))) {
    std::fprintf(stderr, "EMU: launch with %zu bytes of dynamic shared memory, the kernel's limit is %d\n", cfg.smem,
                 max_dynamic_smem(kernel));
    set_last_error(cudaErrorInvalidValue);
    return;
  }
  g_grid_dim = g;
  g_block_dim = b;
  g_body = body;
  g_ctx = ctx;
  g_threads.resize(threads);
  static unsigned launches = 0;
  std::mt19937 rng(knobs().seed * 7919u + launches++);
  for (unsigned z = 0; z < g.z; ++z)
    for (unsigned y = 0; y < g.y; ++y)
      for (unsigned x = 0; x < g.x; ++x) {
        g_block_idx = dim3(x, y, z);
        // shared memory: exactly the launch's bytes, poisoned (0xff: NaN as float, half and bfloat16)
        g_smem_bytes = cfg.smem;
        g_smem = nullptr;
        if (cfg.smem) {
          void* p = nullptr;
          if (posix_memalign(&p, 16, cfg.smem) != 0) fail("out of memory for shared memory");
          std::memset(p, 0xff, cfg.smem);
          g_smem = static_cast<unsigned char*>(p);
        }
        run_block(rng);
        std::free(g_smem);
        g_smem = nullptr;
      }
}

}  // namespace cuda_emu

// ------------------------------------------------------------------------------------ runtime API
using cuda_emu::knobs;

cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = knobs().sms; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = knobs().smem_optin; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = knobs().smem_per_sm; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = knobs().cc_major; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > knobs().smem_optin) return cudaErrorInvalidValue;
    cuda_emu::g_max_dynamic_smem[func] = value;
    return cudaSuccess;
  }
  return cudaSuccess;
}

// Blocks per multiprocessor as limited by threads (2048 per SM), blocks (32 per SM) and shared memory
// (1 KB reserved per block); registers are not modelled.
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void* func, int block_size, size_t smem) {
  if (block_size <= 0 || block_size > 1024) return cudaErrorInvalidValue;
  if (smem > static_cast<size_t>(cuda_emu::max_dynamic_smem(func))) {
    *n = 0;
    return cudaSuccess;
  }
  int b = 2048 / block_size;
  if (b > 32) b = 32;
  const size_t per_block = smem + 1024;
  const int by_smem = static_cast<int>(static_cast<size_t>(knobs().smem_per_sm) / per_block);
  *n = b < by_smem ? b : by_smem;
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = cuda_emu::g_last_error;
  cuda_emu::g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return cuda_emu::g_last_error; }

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorNotSupported: return "operation not supported";
  }
  return "unknown error";
}
