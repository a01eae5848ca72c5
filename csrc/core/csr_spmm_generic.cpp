// Portable build of the CSR core (whatever the compiler's baseline target is).
#include "csr_spmm.h"

#define SK_ISA_NS generic
#include "csr_spmm_impl.h"
