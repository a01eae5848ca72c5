// The Python module sparsekit._C. Importing it loads the kernels, whose static
// initialisers register them with the dispatcher. It also tells how it was built.
#include <Python.h>

#include <cstring>

#include "cpu/ops_cpu.h"

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

PyMethodDef methods[] = {
    {"set_cpu_isa", set_cpu_isa, METH_O, "Force the CPU kernels' instruction set: 'auto', 'generic', 'avx2' or 'avx512'."},
    {"cpu_isa", cpu_isa, METH_NOARGS, "The instruction set the CPU kernels use now."},
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
#else
  PyModule_AddIntConstant(m, "with_cusparselt", 0);
#endif
  return m;
}
