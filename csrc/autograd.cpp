// The Autograd kernels of the linear ops whose gradient sparsekit defines (csr_mm, bsr_mm, bitmap_mm,
// sparse24_mm, int8_weight_only_mm, int8_linear, sparse24_int8_linear), in C++, so that a call pays no
// Python frame at the Autograd key.
//
// Without a gradient to record (grad mode off, or neither x nor the bias requires grad) the kernel goes
// straight below the Autograd key: the cost of a call is that of F.linear's dispatch. Otherwise an
// autograd::Function records the call; its backward gives x the gradient `grad @ W` (W rebuilt dense by
// the op sparsekit::_dense_weight, the formats' pure-PyTorch unpacking, registered from Python) and the
// bias `grad.sum(0)`. Gradients with respect to the packed weight are refused, as before: train the dense
// weight with its mask and convert afterwards.
//
// Device-agnostic: the same kernels serve CPU, CUDA (compiled and Triton kernels) and the references.
// Python registers the equivalent formula (torch.library.register_autograd) only where this file is not
// loaded (sparsekit/ops/__init__.py, register_autograd).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <initializer_list>
#include <optional>

namespace sparsekit {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool requires_grad(const OptTensor& t) { return t.has_value() && t->defined() && t->requires_grad(); }

// The packed weight's tensors: no gradient flows to them.
void refuse_weight_grad(const char* op, std::initializer_list<const Tensor*> weight) {
  for (const Tensor* t : weight)
    TORCH_CHECK(!(t->defined() && t->requires_grad()), "sparsekit.", op,
                ": gradients with respect to the sparse values are not supported; train the dense weight with "
                "its mask (sparsekit.prune) and convert afterwards");
}

// Each op: its name, its typed handle (looked up once) and the format name _dense_weight knows.
// run() calls the op's kernels below the Autograd key; `w` are the packed weight's tensors in the
// op's argument order, `n` its out_features where the schema has it.
struct CsrMm {
  static constexpr const char* name = "csr_mm";
  static constexpr const char* format = "csr";
  static Tensor run(const Tensor& x, const Tensor& w0, const Tensor& w1, const Tensor& w2, int64_t n,
                    const OptTensor& bias) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("sparsekit::csr_mm", "")
                               .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t,
                                             const OptTensor&)>();
    return op.call(x, w0, w1, w2, n, bias);
  }
};

struct BsrMm {
  static constexpr const char* name = "bsr_mm";
  static constexpr const char* format = "bsr";
  static Tensor run(const Tensor& x, const Tensor& w0, const Tensor& w1, const Tensor& w2, int64_t n,
                    const OptTensor& bias) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("sparsekit::bsr_mm", "")
                               .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t,
                                             const OptTensor&)>();
    return op.call(x, w0, w1, w2, n, bias);
  }
};

struct BitmapMm {
  static constexpr const char* name = "bitmap_mm";
  static constexpr const char* format = "bitmap";
  static Tensor run(const Tensor& x, const Tensor& w0, const Tensor& w1, const Tensor& w2, int64_t,
                    const OptTensor& bias) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("sparsekit::bitmap_mm", "")
            .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&)>();
    return op.call(x, w0, w1, w2, bias);
  }
};

struct Sparse24Mm {
  static constexpr const char* name = "sparse24_mm";
  static constexpr const char* format = "2:4";
  static Tensor run(const Tensor& x, const Tensor& w0, const Tensor& w1, const Tensor&, int64_t,
                    const OptTensor& bias) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("sparsekit::sparse24_mm", "")
                               .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&)>();
    return op.call(x, w0, w1, bias);
  }
};

struct Int8WeightOnlyMm {
  static constexpr const char* name = "int8_weight_only_mm";
  static constexpr const char* format = "int8-wo";
  static Tensor run(const Tensor& x, const Tensor& w0, const Tensor& w1, const Tensor&, int64_t,
                    const OptTensor& bias) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("sparsekit::int8_weight_only_mm", "")
                               .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&)>();
    return op.call(x, w0, w1, bias);
  }
};

// The W8A8 linears: the backward pass treats the per-token quantization of x as the identity (the
// straight-through estimator), so x gets `grad @ W` with W the dequantized weight, as int8-wo does.
struct Int8Linear {
  static constexpr const char* name = "int8_linear";
  static constexpr const char* format = "int8-wo";
  static Tensor run(const Tensor& x, const Tensor& w0, const Tensor& w1, const Tensor&, int64_t,
                    const OptTensor& bias) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("sparsekit::int8_linear", "")
                               .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&)>();
    return op.call(x, w0, w1, bias);
  }
};

struct Sparse24Int8Linear {
  static constexpr const char* name = "sparse24_int8_linear";
  static constexpr const char* format = "2:4+int8";
  static Tensor run(const Tensor& x, const Tensor& w0, const Tensor& w1, const Tensor& w2, int64_t,
                    const OptTensor& bias) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("sparsekit::sparse24_int8_linear", "")
            .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&)>();
    return op.call(x, w0, w1, w2, bias);
  }
};

// The dense weight (out_features, in_features) of a packed one, for the backward pass.
Tensor dense_weight(const char* format, const variable_list& w, int64_t n, int64_t k) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("sparsekit::_dense_weight", "")
                             .typed<Tensor(c10::string_view, at::TensorList, int64_t, int64_t)>();
  return op.call(format, w, n, k);
}

// Inputs (x, w0, w1, w2, n, bias): w2 is empty for the two-tensor weights (2:4, int8-wo); an optional, so
// that autograd does not take it for a variable.
template <class Op>
struct LinearFunction : public torch::autograd::Function<LinearFunction<Op>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w0, const Tensor& w1, const OptTensor& w2,
                        int64_t n, const OptTensor& bias) {
    const Tensor w2t = w2.has_value() ? *w2 : Tensor();
    ctx->save_for_backward(w2t.defined() ? variable_list{w0, w1, w2t} : variable_list{w0, w1});
    ctx->saved_data["k"] = x.size(1);
    // needs_input_grad counts the tensor inputs only: x, w0, w1, [w2], [bias]
    ctx->saved_data["bias_edge"] = bias.has_value() && bias->defined() ? (w2t.defined() ? 4 : 3) : -1;
    at::AutoDispatchBelowADInplaceOrView below;
    return Op::run(x, w0, w1, w2t, n, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& grad = grads[0];
    variable_list out(6);
    if (ctx->needs_input_grad(0)) {
      const auto w = ctx->get_saved_variables();
      const int64_t k = ctx->saved_data["k"].toInt();
      out[0] = grad.mm(dense_weight(Op::format, w, grad.size(1), k).to(grad.scalar_type()));
    }
    const int64_t bias_edge = ctx->saved_data["bias_edge"].toInt();
    if (bias_edge >= 0 && ctx->needs_input_grad(bias_edge)) out[5] = grad.sum(0);
    return out;
  }
};

template <class Op>
Tensor linear(const Tensor& x, const Tensor& w0, const Tensor& w1, const Tensor& w2, int64_t n,
              const OptTensor& bias) {
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || requires_grad(bias) || w0.requires_grad() ||
                                       w1.requires_grad() || (w2.defined() && w2.requires_grad()))) {
    at::AutoDispatchBelowADInplaceOrView below;
    return Op::run(x, w0, w1, w2, n, bias);
  }
  refuse_weight_grad(Op::name, {&w0, &w1, &w2});
  return LinearFunction<Op>::apply(x, w0, w1, w2.defined() ? OptTensor(w2) : OptTensor(), n, bias);
}

Tensor csr_mm_autograd(const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values, int64_t n,
                       const OptTensor& bias) {
  return linear<CsrMm>(x, crow, col, values, n, bias);
}

Tensor bsr_mm_autograd(const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values, int64_t n,
                       const OptTensor& bias) {
  return linear<BsrMm>(x, crow, col, values, n, bias);
}

Tensor bitmap_mm_autograd(const Tensor& x, const Tensor& bitmap, const Tensor& word_offsets, const Tensor& values,
                          const OptTensor& bias) {
  return linear<BitmapMm>(x, bitmap, word_offsets, values, -1, bias);
}

Tensor sparse24_mm_autograd(const Tensor& x, const Tensor& values, const Tensor& meta, const OptTensor& bias) {
  return linear<Sparse24Mm>(x, values, meta, Tensor(), -1, bias);
}

Tensor int8_weight_only_mm_autograd(const Tensor& x, const Tensor& w_q, const Tensor& w_scale, const OptTensor& bias) {
  return linear<Int8WeightOnlyMm>(x, w_q, w_scale, Tensor(), -1, bias);
}

Tensor int8_linear_autograd(const Tensor& x, const Tensor& w_q, const Tensor& w_scale, const OptTensor& bias) {
  return linear<Int8Linear>(x, w_q, w_scale, Tensor(), -1, bias);
}

Tensor sparse24_int8_linear_autograd(const Tensor& x, const Tensor& values, const Tensor& meta, const Tensor& w_scale,
                                     const OptTensor& bias) {
  return linear<Sparse24Int8Linear>(x, values, meta, w_scale, -1, bias);
}

}  // namespace
}  // namespace sparsekit

TORCH_LIBRARY_IMPL(sparsekit, Autograd, m) {
  m.impl("csr_mm", &sparsekit::csr_mm_autograd);
  m.impl("bsr_mm", &sparsekit::bsr_mm_autograd);
  m.impl("bitmap_mm", &sparsekit::bitmap_mm_autograd);
  m.impl("sparse24_mm", &sparsekit::sparse24_mm_autograd);
  m.impl("int8_weight_only_mm", &sparsekit::int8_weight_only_mm_autograd);
  m.impl("int8_linear", &sparsekit::int8_linear_autograd);
  m.impl("sparse24_int8_linear", &sparsekit::sparse24_int8_linear_autograd);
}
