// Registration and shape functions of the matcompress TensorFlow ops (the kernels are in
// kernels.cc; the algorithms in csrc/matcompress). An op named "Matcompress>FooBar" appears in
// Python as `foo_bar` on the loaded library.
#include "absl/status/status.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

using Status = absl::Status;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// x (batch, m): y (batch, n) with n from `n_dim` (a dimension handle or an attribute).
Status batch_by(InferenceContext* c, DimensionHandle n) {
  ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
  c->set_output(0, c->Matrix(c->Dim(x, 0), n));
  return absl::OkStatus();
}

// Rows of x (its second dimension) must match dimension `d` of input `i`.
Status rows_match(InferenceContext* c, int x_input, int i, int d, int rank) {
  ShapeHandle x, f;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(x_input), 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(i), rank, &f));
  DimensionHandle merged;
  return c->Merge(c->Dim(x, 1), c->Dim(f, d), &merged);
}

// Gradient ops: every output has the shape of one input.
template <int... Inputs>
Status same_as_inputs(InferenceContext* c) {
  int o = 0;
  for (int i : {Inputs...}) c->set_output(o++, c->input(i));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("Matcompress>CodebookMatMul")
    .Input("x: T")
    .Input("codes: Tcodes")
    .Input("codebook: T")
    .Output("y: T")
    .Attr("n: int >= 1")
    .Attr("packed: bool = false")
    .Attr("T: {float, double}")
    .Attr("Tcodes: {uint8, uint16, int32}")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(rows_match(c, 0, 1, 0, 2));
      ShapeHandle cb;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &cb));
      int64_t n;
      TF_RETURN_IF_ERROR(c->GetAttr("n", &n));
      return batch_by(c, c->MakeDim(n));
    })
    .Doc("y = x W, W[i, jb:(j+1)b] = codebook[codes[i, j]] (4-bit codes packed two per byte "
         "when `packed`).");

REGISTER_OP("Matcompress>CodebookMatMulGrad")
    .Input("x: T")
    .Input("dy: T")
    .Input("codes: Tcodes")
    .Input("codebook: T")
    .Output("dx: T")
    .Output("dcodebook: T")
    .Attr("n: int >= 1")
    .Attr("packed: bool = false")
    .Attr("T: {float, double}")
    .Attr("Tcodes: {uint8, uint16, int32}")
    .SetShapeFn(same_as_inputs<0, 3>)
    .Doc("dx = dy Wᵀ and the codebook gradient (a segment sum of xᵀ dy over the code map).");

REGISTER_OP("Matcompress>SparseCodesMatMul")
    .Input("x: T")
    .Input("indices: int32")
    .Input("values: T")
    .Input("dictionary: T")
    .Output("y: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(rows_match(c, 0, 1, 0, 2));
      ShapeHandle v, d;
      TF_RETURN_IF_ERROR(c->Merge(c->input(1), c->input(2), &v));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &d));
      return batch_by(c, c->Dim(d, 1));
    })
    .Doc("y = x (C D), row i of C holding values[i, t] at atom indices[i, t].");

REGISTER_OP("Matcompress>SparseCodesMatMulGrad")
    .Input("x: T")
    .Input("dy: T")
    .Input("indices: int32")
    .Input("values: T")
    .Input("dictionary: T")
    .Output("dx: T")
    .Output("dvalues: T")
    .Output("ddictionary: T")
    .Attr("T: {float, double}")
    .SetShapeFn(same_as_inputs<0, 3, 4>)
    .Doc("dx = dy Wᵀ and the gradients of the code values (support fixed) and the dictionary.");

REGISTER_OP("Matcompress>SignBitsMatMul")
    .Input("x: T")
    .Input("bits: uint8")
    .Input("scale: T")
    .Output("y: T")
    .Attr("seed: int")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle bits, scale;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &bits));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &scale));
      return batch_by(c, c->Dim(scale, 0));
    })
    .Doc("y = ((x P) S) diag(scale), P (m x k) the Gaussian projection of `seed` (as uint64), "
         "S the sign bits.");

REGISTER_OP("Matcompress>SignBitsMatMulGrad")
    .Input("x: T")
    .Input("dy: T")
    .Input("bits: uint8")
    .Input("scale: T")
    .Output("dx: T")
    .Output("dscale: T")
    .Attr("seed: int")
    .Attr("T: {float, double}")
    .SetShapeFn(same_as_inputs<0, 3>)
    .Doc("dx = dy Wᵀ and the gradient of the column scales.");

REGISTER_OP("Matcompress>PrunedMatMul")
    .Input("x: T")
    .Input("indptr: int64")
    .Input("indices: Tidx")
    .Input("values: T")
    .Output("y: T")
    .Attr("n: int >= 1")
    .Attr("T: {float, double}")
    .Attr("Tidx: {uint16, int32}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle p, v;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &p));
      TF_RETURN_IF_ERROR(c->Merge(c->input(2), c->input(3), &v));
      TF_RETURN_IF_ERROR(c->WithRank(v, 1, &v));
      int64_t n;
      TF_RETURN_IF_ERROR(c->GetAttr("n", &n));
      return batch_by(c, c->MakeDim(n));
    })
    .Doc("y = x W for W in CSR form (column indices non-decreasing within rows).");

REGISTER_OP("Matcompress>PrunedMatMulGrad")
    .Input("x: T")
    .Input("dy: T")
    .Input("indptr: int64")
    .Input("indices: Tidx")
    .Input("values: T")
    .Output("dx: T")
    .Output("dvalues: T")
    .Attr("n: int >= 1")
    .Attr("T: {float, double}")
    .Attr("Tidx: {uint16, int32}")
    .SetShapeFn(same_as_inputs<0, 4>)
    .Doc("dx = dy Wᵀ and the gradient of the kept values.");
