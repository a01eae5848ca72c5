// The Python module sparsekit._C. Importing it loads the kernels, whose static
// initialisers register them with the dispatcher. It also tells how it was built.
#include <Python.h>

#include <cstring>
#include <exception>

#include "cpu/ops_cpu.h"
#ifdef SPARSEKIT_WITH_CUSPARSELT
#include "cuda/cusparselt_api.h"
#endif

#ifndef SPARSEKIT_CUDA_ARCHS
#define SPARSEKIT_CUDA_ARCHS ""
#endif

namespace {

PyObject* set_cpu_isa(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (!name) return nullptr;
  int isa;
  if (!std::strcmp(name, "auto")) isa = 0;
  else if (!std::strcmp(name, "generic")) isa = 1;
  else if (!std::strcmp(name, "avx2")) isa = 2;
  else if (!std::strcmp(name, "avx512")) isa = 3;
  else {
    PyErr_Format(PyExc_ValueError, "expected one of 'auto', 'generic', 'avx2', 'avx512', got '%s'", name);
    return nullptr;
  }
  sparsekit::cpu::set_isa(isa);
  Py_RETURN_NONE;
}

PyObject* cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(sparsekit::cpu::active_isa_name()); }

// Test switch: the CPU bindings run the ATen index checks (what CUDA runs) instead of the pointer ones.
PyObject* set_aten_index_checks(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  sparsekit::cpu::set_aten_index_checks(on != 0);
  Py_RETURN_NONE;
}

PyObject* set_cpu_dense_min_m(PyObject*, PyObject* arg) {
  const long long m = PyLong_AsLongLong(arg);
  if (m == -1 && PyErr_Occurred()) return nullptr;
  if (m < -1) {
    PyErr_Format(PyExc_ValueError, "expected -1 (automatic), 0 (never) or a positive M, got %lld", m);
    return nullptr;
  }
  sparsekit::cpu::set_dense_min_m(m);
  Py_RETURN_NONE;
}

// {op: {dtype: M}} of the thresholds in force; a bad SPARSEKIT_CPU_DENSE_MIN_M raises ValueError.
PyObject* cpu_dense_min_m(PyObject*, PyObject*) {
  const char* ops[] = {"2:4", "int8-wo", "csr", "bitmap"};
  const char* dtypes[] = {"float32", "bfloat16", "float16"};
  PyObject* out = PyDict_New();
  if (!out) return nullptr;
  for (const char* op : ops) {
    PyObject* per = PyDict_New();
    if (!per || PyDict_SetItemString(out, op, per) < 0) {
      Py_XDECREF(per);
      Py_DECREF(out);
      return nullptr;
    }
    Py_DECREF(per);  // out holds it
    for (const char* dt : dtypes) {
      long long m;
      try {
        m = sparsekit::cpu::dense_min_m(op, dt);
      } catch (const std::exception& e) {
        PyErr_SetString(PyExc_ValueError, e.what());
        Py_DECREF(out);
        return nullptr;
      }
      PyObject* v = PyLong_FromLongLong(m);
      if (!v || PyDict_SetItemString(per, dt, v) < 0) {
        Py_XDECREF(v);
        Py_DECREF(out);
        return nullptr;
      }
      Py_DECREF(v);
    }
  }
  return out;
}

// cpu_dense_panels(op, dtype, M, N, K, nnz) -> bool: whether the CPU op takes its dense panels for that call.
PyObject* cpu_dense_panels(PyObject*, PyObject* args) {
  const char *op, *dt;
  long long M, N, K, nnz;
  if (!PyArg_ParseTuple(args, "ssLLLL", &op, &dt, &M, &N, &K, &nnz)) return nullptr;
  try {
    if (sparsekit::cpu::dense_panels_take(op, dt, M, N, K, nnz)) Py_RETURN_TRUE;
    Py_RETURN_FALSE;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
}

// cpu_sparse24_pairs(dtype, M) -> bool: whether the CPU 2:4 op's kernel with staged x serves M rows of x of that dtype
// (bf16 from M = 21 with AVX-512 BF16, float32 from M = 11 with AVX-512, at the instruction set in force), where the
// dense panels do not.
PyObject* cpu_sparse24_pairs(PyObject*, PyObject* args) {
  const char* dt;
  long long M;
  if (!PyArg_ParseTuple(args, "sL", &dt, &M)) return nullptr;
  try {
    if (sparsekit::cpu::sparse24_pairs_kernel(dt, M)) Py_RETURN_TRUE;
    Py_RETURN_FALSE;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
}

// cpu_bitmap_csr(M) -> bool: whether the CPU bitmap op runs M rows of x as CSR (its rows decoded into column lists, the
// CSR core's AVX-512 kernels: from M = 9 with AVX-512, at the instruction set in force), where the dense panels do not.
PyObject* cpu_bitmap_csr(PyObject*, PyObject* args) {
  long long M;
  if (!PyArg_ParseTuple(args, "L", &M)) return nullptr;
  if (sparsekit::cpu::bitmap_csr_kernel(M)) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
}

#ifdef SPARSEKIT_WITH_CUSPARSELT
// A C++ exception must not cross into Python: report it as a RuntimeError.
template <typename F>
PyObject* guarded(F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

PyObject* cusparselt_cache_stats(PyObject*, PyObject*) {
  return guarded([] {
    const auto s = sparsekit::cuda::cusparselt_stats();
    return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:L,s:L}", "entries", (long long)s.entries, "capacity",
                         (long long)s.capacity, "plans_created", (long long)s.plans_created, "searches",
                         (long long)s.searches, "hits", (long long)s.hits, "evictions", (long long)s.evictions,
                         "algs_remembered", (long long)s.algs_remembered);
  });
}

PyObject* cusparselt_release(PyObject*, PyObject*) {
  return guarded([] {
    sparsekit::cuda::cusparselt_release();
    Py_RETURN_NONE;
  });
}

PyObject* cusparselt_loaded_version(PyObject*, PyObject*) {
  return guarded([] { return PyUnicode_FromString(sparsekit::cuda::cusparselt_loaded_version().c_str()); });
}
#endif

PyMethodDef methods[] = {
    {"set_cpu_isa", set_cpu_isa, METH_O, "Force the CPU kernels' instruction set: 'auto', 'generic', 'avx2' or 'avx512'."},
    {"cpu_isa", cpu_isa, METH_NOARGS, "The instruction set the CPU kernels use now."},
    {"_set_aten_index_checks", set_aten_index_checks, METH_O,
     "Tests: True makes the CPU ops check index buffers with the ATen checks the CUDA ops run."},
    {"set_cpu_dense_min_m", set_cpu_dense_min_m, METH_O,
     "From which M the CPU 2:4, int8-wo, CSR and bitmap ops multiply dense panels of W with ATen's GEMM: -1 "
     "automatic, 0 never, n."},
    {"cpu_dense_min_m", cpu_dense_min_m, METH_NOARGS,
     "The M from which the CPU 2:4 / int8-wo / csr / bitmap ops use the dense GEMM, per op and dtype (0: never)."},
    {"cpu_dense_panels", cpu_dense_panels, METH_VARARGS,
     "cpu_dense_panels(op, dtype, M, N, K, nnz): whether the CPU op takes its dense panels for that call."},
    {"cpu_sparse24_pairs", cpu_sparse24_pairs, METH_VARARGS,
     "cpu_sparse24_pairs(dtype, M): whether the CPU 2:4 op's kernel with staged x (bf16 from M = 21 with AVX-512 "
     "BF16, float32 from M = 11 with AVX-512) serves M rows of x of that dtype, where the dense panels do not."},
    {"cpu_bitmap_csr", cpu_bitmap_csr, METH_VARARGS,
     "cpu_bitmap_csr(M): whether the CPU bitmap op runs M rows of x as CSR (its rows decoded into column lists, the CSR "
     "core's AVX-512 kernels: from M = 9 with AVX-512), where the dense panels do not."},
#ifdef SPARSEKIT_WITH_CUSPARSELT
    {"cusparselt_cache_stats", cusparselt_cache_stats, METH_NOARGS,
     "The cuSPARSELt plan cache: entries, capacity, plans_created, searches, hits, evictions, algs_remembered."},
    {"cusparselt_release", cusparselt_release, METH_NOARGS,
     "Destroy every cached cuSPARSELt plan and handle (also run at interpreter exit)."},
    {"cusparselt_loaded_version", cusparselt_loaded_version, METH_NOARGS,
     "The version of the cuSPARSELt library loaded in this process."},
#endif
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "sparsekit compiled kernels", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&module);
  if (!m) return nullptr;
#ifdef SPARSEKIT_WITH_CUDA
  PyModule_AddIntConstant(m, "with_cuda", 1);
#else
  PyModule_AddIntConstant(m, "with_cuda", 0);
#endif
  PyModule_AddStringConstant(m, "cuda_archs", SPARSEKIT_CUDA_ARCHS);
#ifdef SPARSEKIT_WITH_CUSPARSELT
  PyModule_AddIntConstant(m, "with_cusparselt", 1);
  PyModule_AddStringConstant(m, "cusparselt_version", sparsekit::cuda::cusparselt_build_version().c_str());
#else
  PyModule_AddIntConstant(m, "with_cusparselt", 0);
  PyModule_AddStringConstant(m, "cusparselt_version", "");
#endif
  return m;
}
