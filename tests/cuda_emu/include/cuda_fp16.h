// The CUDA emulator (tests/cuda_emu/cuda_emu.h) stands in for <cuda_fp16.h>.
#pragma once
#include "../cuda_emu.h"
