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

// ---- fitting: the factorizations computed inside a graph (no gradients) ----------------------

// Shapes of SparseEncode's inputs: x (n, f) and dictionary (k, f); sets *x and *d.
absl::Status sparse_encode_inputs(InferenceContext* c, ShapeHandle* x, ShapeHandle* d) {
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, d));
  DimensionHandle f;
  return c->Merge(c->Dim(*x, 1), c->Dim(*d, 1), &f);
}

REGISTER_OP("Matcompress>SparseEncode")
    .Input("x: T")
    .Input("dictionary: T")
    .Output("indices: int32")
    .Output("values: T")
    .Output("nnz: int64")
    .Attr("max_atoms: int >= 1")
    .Attr("tol: float = -1")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, d;
      TF_RETURN_IF_ERROR(sparse_encode_inputs(c, &x, &d));
      int64_t s;
      TF_RETURN_IF_ERROR(c->GetAttr("max_atoms", &s));
      c->set_output(0, c->Matrix(c->Dim(x, 0), s));
      c->set_output(1, c->Matrix(c->Dim(x, 0), s));
      c->set_output(2, c->Vector(c->Dim(x, 0)));
      return absl::OkStatus();
    })
    .Doc("Batch-OMP codes of the rows of x over the rows of dictionary: per row, nnz atoms in "
         "selection order (indices, values; the slots past nnz hold 0). tol >= 0: stop each row "
         "once its squared residual norm is <= tol (at most max_atoms atoms).");

REGISTER_OP("Matcompress>SparseEncodeDense")
    .Input("x: T")
    .Input("dictionary: T")
    .Output("codes: T")
    .Attr("max_atoms: int >= 1")
    .Attr("tol: float = -1")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, d;
      TF_RETURN_IF_ERROR(sparse_encode_inputs(c, &x, &d));
      c->set_output(0, c->Matrix(c->Dim(x, 0), c->Dim(d, 0)));
      return absl::OkStatus();
    })
    .Doc("The codes of SparseEncode as a dense (n_samples, n_components) matrix, written by the "
         "kernel itself (no scatter).");

REGISTER_OP("Matcompress>FitCodebook")
    .Input("points: T")
    .Output("codebook: T")
    .Output("codes: int32")
    .Output("inertia: double")
    .Attr("n_codes: int >= 1")
    .Attr("method: {'lloyd', 'optimal'} = 'lloyd'")
    .Attr("max_iter: int >= 1 = 100")
    .Attr("tol: float = 1e-6")
    .Attr("seed: int = 0")
    .Attr("n_init: int >= 1 = 1")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle p;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &p));
      int64_t k;
      TF_RETURN_IF_ERROR(c->GetAttr("n_codes", &k));
      c->set_output(0, c->Matrix(k, c->Dim(p, 1)));
      c->set_output(1, c->Vector(c->Dim(p, 0)));
      c->set_output(2, c->Scalar());
      return absl::OkStatus();
    })
    .Doc("k-means of the rows of points (n, b) into n_codes centroids: scalar (b = 1, Lloyd or "
         "the exact optimum) or block Lloyd, from k-means++.");

REGISTER_OP("Matcompress>Simhash")
    .Input("a: T")
    .Output("bits: uint8")
    .Output("scale: T")
    .Attr("n_bits: int >= 1")
    .Attr("seed: int")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle a;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &a));
      int64_t k;
      TF_RETURN_IF_ERROR(c->GetAttr("n_bits", &k));
      DimensionHandle n = c->Dim(a, 1), bytes;
      TF_RETURN_IF_ERROR(c->Add(n, 7, &bytes));
      TF_RETURN_IF_ERROR(c->Divide(bytes, 8, /*evenly_divisible=*/false, &bytes));
      c->set_output(0, c->Matrix(k, bytes));
      c->set_output(1, c->Vector(n));
      return absl::OkStatus();
    })
    .Doc("Sign bits of P^T a (P the Gaussian projection of `seed`) and least-squares column "
         "scales.");
