// Settings of the CPU kernels that the Python module can read and change.
#pragma once

namespace sparsekit {
namespace cpu {
// 0 = auto, 1 = generic, 2 = avx2 (values of core::Isa).
void set_isa(int isa);
int get_isa();
// The instruction set that calls run with now (auto resolved).
const char* active_isa_name();
}  // namespace cpu
}  // namespace sparsekit
