// Portable build of the int8 cores (whatever the compiler's baseline target is).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>

#include "int8_gemm.h"

#define SK_I8_NS i8_generic
#define SK_I8_LEVEL 0
#include "int8_gemm_impl.h"
