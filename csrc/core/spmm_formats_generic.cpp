// Portable build of the BSR / bitmap / 2:4 cores.
#include <vector>

#include "spmm_formats.h"

#define SK_ISA_NS generic
#include "spmm_formats_impl.h"
