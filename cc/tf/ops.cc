// Op declarations of the fused recurrence: signatures, complete shape functions and docs. Kernels live apart
// (kernels_cpu.cc, kernels_gpu.cc). A changed signature becomes a new op (FusedLSTMSequenceV2, ...), so exported
// SavedModels keep loading.
//
// The shape functions check in graph construction what the kernels check at run time (rnn_args.cc), so a bad
// graph fails when it is built, with the argument named. Every dim is learnt from whichever input knows it
// (batch from x_proj, sequence_lengths or a state; units from either kernel, x_proj's width, a state, the GRU
// bias), so two inputs that disagree are caught even when a third one is unknown.
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "cc/tf/status.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace fused_rnn {
namespace {

using ::absl::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

int NumDirs(const std::string& direction) { return direction == "bidirectional" ? 2 : 1; }

// Input `index` must be rank `rank`; the error names the argument.
Status Rank(InferenceContext* c, int index, int rank, const char* name, ShapeHandle* out) {
  if (!c->WithRank(c->input(index), rank, out).ok()) {
    return Invalid(name, " must be rank ", rank, ", got shape ", c->DebugString(c->input(index)));
  }
  return absl::OkStatus();
}

// Merges input `index` with the shape `want` (pointers to the dims the other inputs gave so far), dim by dim, and
// writes back what the input adds; on a disagreement an error naming the argument, with both shapes.
Status MergeShape(InferenceContext* c, int index, const char* name, std::initializer_list<DimensionHandle*> want) {
  ShapeHandle given;
  TF_RETURN_IF_ERROR(Rank(c, index, static_cast<int>(want.size()), name, &given));
  std::vector<DimensionHandle> dims;
  for (DimensionHandle* d : want) dims.push_back(*d);
  const ShapeHandle want_shape = c->MakeShape(dims);
  int i = 0;
  for (DimensionHandle* d : want) {
    DimensionHandle merged;
    if (!c->Merge(c->Dim(given, i++), *d, &merged).ok()) {
      return Invalid(name, " must have shape ", c->DebugString(want_shape), ", got ", c->DebugString(given));
    }
    *d = merged;
  }
  return absl::OkStatus();
}

// `whole` (a known dim) must be `factor` * units with units > 0; merges whole / factor into *units. The error
// names the argument, says which dim, and what it should be.
Status MergeMultiple(InferenceContext* c, DimensionHandle whole, int64_t factor, const char* name,
                     const char* what, DimensionHandle* units) {
  if (!c->ValueKnown(whole)) return absl::OkStatus();
  const int64_t w = c->Value(whole);
  DimensionHandle merged;
  if (w == 0 || w % factor != 0 || !c->Merge(c->MakeDim(w / factor), *units, &merged).ok()) {
    return Invalid(name, "'s ", what, " must be ", factor, " * num_units",
                   c->ValueKnown(*units) ? absl::StrCat(" = ", factor * c->Value(*units)) : std::string(" > 0"),
                   ", got ", w);
  }
  *units = merged;
  return absl::OkStatus();
}

// The kernels' rule (rnn_args.cc): NaN, negative and subnormal clips are rejected; infinity clips nothing.
Status CheckClip(float clip, const char* name) {
  if (!(clip >= 0.f) || IsSubnormal(clip)) {
    return Invalid(name, " must be 0 (no clip) or a normal float >= FLT_MIN (1.18e-38), got ", FloatForMessage(clip));
  }
  return absl::OkStatus();
}

// What every op of one cell knows about its dims once the common inputs are merged.
struct RnnDims {
  bool time_major = false;
  int dirs = 1;
  int gates = 4;
  int num_proj = 0;
  DimensionHandle batch, time, units, width;  // width: R = num_proj or units
};

// The common inputs of every op: x_proj (0), recurrent_kernel (1), projection_kernel or recurrent_bias (2),
// sequence_lengths (3), initial_h (4) and, for the LSTM, initial_c (5).
Status CommonDims(InferenceContext* c, bool lstm, RnnDims* d) {
  std::string direction;
  TF_RETURN_IF_ERROR(c->GetAttr("direction", &direction));
  TF_RETURN_IF_ERROR(c->GetAttr("time_major", &d->time_major));
  d->dirs = NumDirs(direction);
  d->gates = lstm ? 4 : 3;
  d->num_proj = 0;
  if (lstm) {
    float cell_clip, proj_clip;
    TF_RETURN_IF_ERROR(c->GetAttr("num_proj", &d->num_proj));
    TF_RETURN_IF_ERROR(c->GetAttr("cell_clip", &cell_clip));
    TF_RETURN_IF_ERROR(c->GetAttr("proj_clip", &proj_clip));
    TF_RETURN_IF_ERROR(CheckClip(cell_clip, "cell_clip"));
    TF_RETURN_IF_ERROR(CheckClip(proj_clip, "proj_clip"));
    if (d->num_proj == 0 && proj_clip != 0.f) return Invalid("proj_clip needs num_proj > 0");
  }
  const int64_t D = d->dirs, G = d->gates;
  DimensionHandle dirs = c->MakeDim(D);

  ShapeHandle x, rec;
  TF_RETURN_IF_ERROR(Rank(c, 0, 3, "x_proj", &x));
  TF_RETURN_IF_ERROR(Rank(c, 1, 3, "recurrent_kernel", &rec));
  d->batch = c->Dim(x, d->time_major ? 1 : 0);
  d->time = c->Dim(x, d->time_major ? 0 : 1);
  if (c->ValueKnown(d->time) && c->Value(d->time) > std::numeric_limits<int32_t>::max()) {
    return Invalid("x_proj has too many timesteps: ", c->Value(d->time));
  }
  d->units = c->UnknownDim();
  DimensionHandle merged;
  if (!c->Merge(c->Dim(rec, 0), dirs, &merged).ok()) {
    return Invalid("recurrent_kernel's first dimension must be num_directions = ", D, " for direction '",
                   direction, "', got shape ", c->DebugString(rec));
  }
  TF_RETURN_IF_ERROR(MergeMultiple(c, c->Dim(rec, 2), G, "recurrent_kernel", "last dimension", &d->units));
  TF_RETURN_IF_ERROR(MergeMultiple(c, c->Dim(x, 2), D * G, "x_proj", "last dimension (num_directions * gates)",
                                   &d->units));
  d->width = d->num_proj > 0 ? c->MakeDim(d->num_proj) : d->units;
  DimensionHandle gate_width;
  TF_RETURN_IF_ERROR(c->Multiply(d->units, G, &gate_width));
  TF_RETURN_IF_ERROR(MergeShape(c, 1, "recurrent_kernel", {&dirs, &d->width, &gate_width}));
  if (d->num_proj == 0) d->units = d->width;  // rec's rows are the units then
  if (lstm) {
    DimensionHandle proj_cols = c->MakeDim(d->num_proj);
    TF_RETURN_IF_ERROR(MergeShape(c, 2, "projection_kernel", {&dirs, &d->units, &proj_cols}));
    if (d->num_proj == 0) d->width = d->units;
  } else {
    ShapeHandle bias;
    TF_RETURN_IF_ERROR(Rank(c, 2, 2, "recurrent_bias", &bias));
    TF_RETURN_IF_ERROR(MergeMultiple(c, c->Dim(bias, 1), G, "recurrent_bias", "last dimension", &d->units));
    d->width = d->units;
    TF_RETURN_IF_ERROR(c->Multiply(d->units, G, &gate_width));
    TF_RETURN_IF_ERROR(MergeShape(c, 2, "recurrent_bias", {&dirs, &gate_width}));
  }
  TF_RETURN_IF_ERROR(MergeShape(c, 3, "sequence_lengths", {&d->batch}));
  TF_RETURN_IF_ERROR(MergeShape(c, 4, "initial_h", {&dirs, &d->batch, &d->width}));
  if (d->num_proj == 0) d->units = d->width;
  if (lstm) TF_RETURN_IF_ERROR(MergeShape(c, 5, "initial_c", {&dirs, &d->batch, &d->units}));
  if (d->num_proj == 0) d->width = d->units;
  return absl::OkStatus();
}

// [B, T, D * width] (or time-major) from the merged dims.
Status SequenceShape(InferenceContext* c, const RnnDims& d, DimensionHandle width, ShapeHandle* out) {
  DimensionHandle all;
  TF_RETURN_IF_ERROR(c->Multiply(width, d.dirs, &all));
  *out = d.time_major ? c->MakeShape({d.time, d.batch, all}) : c->MakeShape({d.batch, d.time, all});
  return absl::OkStatus();
}

// Floats of the reserve, per (direction, batch row, timestep): 5H + P for the LSTM, 4H for the GRU.
Status ReserveSize(InferenceContext* c, const RnnDims& d, DimensionHandle* n) {
  DimensionHandle features;
  TF_RETURN_IF_ERROR(c->Multiply(d.units, d.gates == 4 ? 5 : 4, &features));
  TF_RETURN_IF_ERROR(c->Add(features, d.num_proj, &features));
  TF_RETURN_IF_ERROR(c->Multiply(d.batch, d.dirs, n));
  TF_RETURN_IF_ERROR(c->Multiply(*n, d.time, n));
  return c->Multiply(*n, features, n);
}

// Outputs of every forward op: output, final_h(, final_c); then the reserve where the op has one.
Status ForwardOutputs(InferenceContext* c, const RnnDims& d, bool lstm, bool has_reserve) {
  ShapeHandle out;
  TF_RETURN_IF_ERROR(SequenceShape(c, d, d.width, &out));
  int i = 0;
  c->set_output(i++, out);
  c->set_output(i++, c->MakeShape({c->MakeDim(d.dirs), d.batch, d.width}));
  if (lstm) c->set_output(i++, c->MakeShape({c->MakeDim(d.dirs), d.batch, d.units}));
  if (!has_reserve) return absl::OkStatus();
  bool is_training;
  TF_RETURN_IF_ERROR(c->GetAttr("is_training", &is_training));
  DimensionHandle n = c->MakeDim(0);
  if (is_training) TF_RETURN_IF_ERROR(ReserveSize(c, d, &n));
  c->set_output(i, c->Vector(n));
  return absl::OkStatus();
}

Status LstmShape(InferenceContext* c) {
  RnnDims d;
  TF_RETURN_IF_ERROR(CommonDims(c, /*lstm=*/true, &d));
  return ForwardOutputs(c, d, /*lstm=*/true, /*has_reserve=*/true);
}

Status GruShape(InferenceContext* c) {
  RnnDims d;
  TF_RETURN_IF_ERROR(CommonDims(c, /*lstm=*/false, &d));
  return ForwardOutputs(c, d, /*lstm=*/false, /*has_reserve=*/true);
}

// 16-bit weight ops: the float forward's inputs, the kernels 16-bit; no reserve output (inference only).
Status Lstm16Shape(InferenceContext* c) {
  RnnDims d;
  TF_RETURN_IF_ERROR(CommonDims(c, /*lstm=*/true, &d));
  return ForwardOutputs(c, d, /*lstm=*/true, /*has_reserve=*/false);
}

Status Gru16Shape(InferenceContext* c) {
  RnnDims d;
  TF_RETURN_IF_ERROR(CommonDims(c, /*lstm=*/false, &d));
  return ForwardOutputs(c, d, /*lstm=*/false, /*has_reserve=*/false);
}

// INT8 ops: inputs 0.. as the float forward (the kernels int8), then the per-row scales.
Status LstmInt8Shape(InferenceContext* c) {
  RnnDims d;
  TF_RETURN_IF_ERROR(CommonDims(c, /*lstm=*/true, &d));
  DimensionHandle dirs = c->MakeDim(d.dirs);
  TF_RETURN_IF_ERROR(MergeShape(c, 6, "recurrent_scale", {&dirs, &d.width}));
  if (d.num_proj == 0) d.units = d.width;
  DimensionHandle proj_rows = d.num_proj > 0 ? d.units : c->MakeDim(0);
  TF_RETURN_IF_ERROR(MergeShape(c, 7, "projection_scale", {&dirs, &proj_rows}));
  if (d.num_proj > 0) d.units = proj_rows;
  return ForwardOutputs(c, d, /*lstm=*/true, /*has_reserve=*/false);
}

Status GruInt8Shape(InferenceContext* c) {
  RnnDims d;
  TF_RETURN_IF_ERROR(CommonDims(c, /*lstm=*/false, &d));
  DimensionHandle dirs = c->MakeDim(d.dirs);
  TF_RETURN_IF_ERROR(MergeShape(c, 5, "recurrent_scale", {&dirs, &d.units}));
  d.width = d.units;
  return ForwardOutputs(c, d, /*lstm=*/false, /*has_reserve=*/false);
}

// Gradient ops: inputs 0.. as the forward, then output, reserve, d_output, d_final_h(, d_final_c). Each gradient
// has the shape of the forward input it belongs to, rebuilt from the merged dims.
Status GradShape(InferenceContext* c, bool lstm) {
  RnnDims d;
  TF_RETURN_IF_ERROR(CommonDims(c, lstm, &d));
  const int extra = lstm ? 6 : 5;  // index of `output`
  DimensionHandle dirs = c->MakeDim(d.dirs), out_width;
  // Without a projection width and units are one dim: keep the two handles in step after every merge.
  const auto sync = [&](bool from_width) {
    if (d.num_proj != 0) return;
    if (from_width) {
      d.units = d.width;
    } else {
      d.width = d.units;
    }
  };
  TF_RETURN_IF_ERROR(MergeShape(c, extra + 3, "d_final_h", {&dirs, &d.batch, &d.width}));
  sync(/*from_width=*/true);
  if (lstm) {
    TF_RETURN_IF_ERROR(MergeShape(c, extra + 4, "d_final_c", {&dirs, &d.batch, &d.units}));
    sync(/*from_width=*/false);
  }
  TF_RETURN_IF_ERROR(c->Multiply(d.width, d.dirs, &out_width));
  for (const auto& [index, name] : {std::pair<int, const char*>{extra, "output"}, {extra + 2, "d_output"}}) {
    if (d.time_major) {
      TF_RETURN_IF_ERROR(MergeShape(c, index, name, {&d.time, &d.batch, &out_width}));
    } else {
      TF_RETURN_IF_ERROR(MergeShape(c, index, name, {&d.batch, &d.time, &out_width}));
    }
  }
  // What the outputs' width says of R (= the units without a projection).
  TF_RETURN_IF_ERROR(MergeMultiple(c, out_width, d.dirs, "output", "last dimension (num_directions * width)",
                                   &d.width));
  sync(/*from_width=*/true);
  ShapeHandle reserve;
  TF_RETURN_IF_ERROR(Rank(c, extra + 1, 1, "reserve", &reserve));
  DimensionHandle n, merged;
  TF_RETURN_IF_ERROR(ReserveSize(c, d, &n));
  if (!c->Merge(c->Dim(reserve, 0), n, &merged).ok()) {
    return Invalid("reserve must be the forward's reserve of shape [", c->DebugString(n),
                   "] (run the forward with is_training=true), got ", c->DebugString(reserve));
  }
  const int64_t G = d.gates;
  DimensionHandle x_width, gate_width;
  TF_RETURN_IF_ERROR(c->Multiply(d.units, G * d.dirs, &x_width));
  TF_RETURN_IF_ERROR(c->Multiply(d.units, G, &gate_width));
  int i = 0;
  c->set_output(i++, d.time_major ? c->MakeShape({d.time, d.batch, x_width}) : c->MakeShape({d.batch, d.time, x_width}));
  c->set_output(i++, c->MakeShape({dirs, d.width, gate_width}));
  c->set_output(i++, lstm ? c->MakeShape({dirs, d.units, c->MakeDim(d.num_proj)}) : c->MakeShape({dirs, gate_width}));
  c->set_output(i++, c->MakeShape({dirs, d.batch, d.width}));
  if (lstm) c->set_output(i++, c->MakeShape({dirs, d.batch, d.units}));
  return absl::OkStatus();
}

Status LstmGradShape(InferenceContext* c) { return GradShape(c, /*lstm=*/true); }
Status GruGradShape(InferenceContext* c) { return GradShape(c, /*lstm=*/false); }

}  // namespace

REGISTER_OP("FusedLSTMSequence")
    .Input("x_proj: float")
    .Input("recurrent_kernel: float")
    .Input("projection_kernel: float")
    .Input("sequence_lengths: int32")
    .Input("initial_h: float")
    .Input("initial_c: float")
    .Output("output: float")
    .Output("final_h: float")
    .Output("final_c: float")
    .Output("reserve: float")
    .Attr("direction: {'forward', 'reverse', 'bidirectional'} = 'forward'")
    .Attr("time_major: bool = false")
    .Attr("num_proj: int >= 0 = 0")
    .Attr("cell_clip: float = 0.0")
    .Attr("proj_clip: float = 0.0")
    .Attr("is_training: bool = false")
    .SetShapeFn(LstmShape)
    .Doc(R"doc(
Runs an LSTM (optionally with a projection, TF LSTMCell(num_proj=...) semantics) over a whole sequence, every
direction, in one call. Gate order (i, f, c, o) as Keras. D = 1 for 'forward'/'reverse', 2 for 'bidirectional';
H = units; R = num_proj if num_proj > 0 else H.

x_proj: [B, T, D*4H] ([T, B, D*4H] if time_major): x @ kernel + bias for every timestep and direction, the
  forward direction's 4H columns first.
recurrent_kernel: [D, R, 4H], Keras' recurrent_kernel per direction.
projection_kernel: [D, H, num_proj]; an empty [D, H, 0] when num_proj == 0.
sequence_lengths: [B] int32 in [0, T]. Batches are right-padded; the reverse direction walks each sequence
  backwards within its own length (tf.reverse_sequence semantics).
initial_h: [D, B, R]. initial_c: [D, B, H].
output: [B, T, D*R] ([T, B, D*R] if time_major); zero at t >= sequence_lengths[b]; the reverse direction's
  output sits at the original time positions, in columns [R, 2R).
final_h: [D, B, R], final_c: [D, B, H]: the state after each sequence's last valid step (the initial state for
  an empty sequence).
reserve: [D*B*T*(5H+num_proj)] when is_training (what the backward pass needs), else [0].
direction: 'forward', 'reverse' or 'bidirectional'.
cell_clip: clip c to [-cell_clip, cell_clip] after each update; 0 disables.
proj_clip: clip the projected output to [-proj_clip, proj_clip]; 0 disables.
On a GPU (sm_80+) with TensorFlow's TF32 execution enabled (its default), batches of 8 or more may take TF32
recurrent products, as TensorFlow's cuDNN kernels do; accumulation, cell math and states stay float32.
)doc");

REGISTER_OP("FusedGRUSequence")
    .Input("x_proj: float")
    .Input("recurrent_kernel: float")
    .Input("recurrent_bias: float")
    .Input("sequence_lengths: int32")
    .Input("initial_h: float")
    .Output("output: float")
    .Output("final_h: float")
    .Output("reserve: float")
    .Attr("direction: {'forward', 'reverse', 'bidirectional'} = 'forward'")
    .Attr("time_major: bool = false")
    .Attr("is_training: bool = false")
    .SetShapeFn(GruShape)
    .Doc(R"doc(
Runs a GRU with Keras reset_after=True semantics (the cuDNN-compatible one; gate order z, r, n) over a whole
sequence, every direction, in one call. D = 1 for 'forward'/'reverse', 2 for 'bidirectional'; H = units.

x_proj: [B, T, D*3H] ([T, B, D*3H] if time_major): x @ kernel + input_bias, forward direction first.
recurrent_kernel: [D, H, 3H], Keras' recurrent_kernel per direction.
recurrent_bias: [D, 3H], Keras' recurrent bias (bias[1]); it sits inside r * (h @ U_n + b_n).
sequence_lengths: [B] int32 in [0, T]; right-padded batches, as for FusedLSTMSequence.
initial_h: [D, B, H].
output: [B, T, D*H] ([T, B, D*H] if time_major); zero at t >= sequence_lengths[b].
final_h: [D, B, H]: the state after each sequence's last valid step.
reserve: [D*B*T*4H] when is_training, else [0].
GPU precision as FusedLSTMSequence (TF32 recurrent products under TensorFlow's TF32 policy).
)doc");

REGISTER_OP("FusedLSTMSequenceGrad")
    .Input("x_proj: float")
    .Input("recurrent_kernel: float")
    .Input("projection_kernel: float")
    .Input("sequence_lengths: int32")
    .Input("initial_h: float")
    .Input("initial_c: float")
    .Input("output: float")
    .Input("reserve: float")
    .Input("d_output: float")
    .Input("d_final_h: float")
    .Input("d_final_c: float")
    .Output("d_x_proj: float")
    .Output("d_recurrent_kernel: float")
    .Output("d_projection_kernel: float")
    .Output("d_initial_h: float")
    .Output("d_initial_c: float")
    .Attr("direction: {'forward', 'reverse', 'bidirectional'} = 'forward'")
    .Attr("time_major: bool = false")
    .Attr("num_proj: int >= 0 = 0")
    .Attr("cell_clip: float = 0.0")
    .Attr("proj_clip: float = 0.0")
    .SetShapeFn(LstmGradShape)
    .Doc(R"doc(
Backpropagation through time for FusedLSTMSequence, every step and direction in one call. Inputs 0-5 and the
attributes are the forward's; x_proj is read only for its shape.

output: the forward's output, [B, T, D*R] ([T, B, D*R] if time_major).
reserve: the forward's reserve, run with is_training=true: [D*B*T*(5H+num_proj)].
d_output: gradient of the output, shaped like it; ignored at t >= sequence_lengths[b].
d_final_h: [D, B, R]. d_final_c: [D, B, H].
d_x_proj: shaped like x_proj; zero at t >= sequence_lengths[b]. The gradient of the input kernel and bias
  follows from it (x_proj = x @ kernel + bias).
d_recurrent_kernel: [D, R, 4H]. d_projection_kernel: like projection_kernel.
d_initial_h: [D, B, R]. d_initial_c: [D, B, H].
A clipped value passes no gradient where its clip was active (tf.clip_by_value's rule).
)doc");

REGISTER_OP("FusedGRUSequenceGrad")
    .Input("x_proj: float")
    .Input("recurrent_kernel: float")
    .Input("recurrent_bias: float")
    .Input("sequence_lengths: int32")
    .Input("initial_h: float")
    .Input("output: float")
    .Input("reserve: float")
    .Input("d_output: float")
    .Input("d_final_h: float")
    .Output("d_x_proj: float")
    .Output("d_recurrent_kernel: float")
    .Output("d_recurrent_bias: float")
    .Output("d_initial_h: float")
    .Attr("direction: {'forward', 'reverse', 'bidirectional'} = 'forward'")
    .Attr("time_major: bool = false")
    .SetShapeFn(GruGradShape)
    .Doc(R"doc(
Backpropagation through time for FusedGRUSequence in one call. Inputs 0-4 and the attributes are the
forward's; x_proj is read only for its shape.

output: the forward's output, [B, T, D*H] ([T, B, D*H] if time_major).
reserve: the forward's reserve, run with is_training=true: [D*B*T*4H].
d_output: gradient of the output, shaped like it; ignored at t >= sequence_lengths[b].
d_final_h: [D, B, H].
d_x_proj: shaped like x_proj; zero at t >= sequence_lengths[b].
d_recurrent_kernel: [D, H, 3H]. d_recurrent_bias: [D, 3H]. d_initial_h: [D, B, H].
)doc");

REGISTER_OP("FusedLSTMSequenceInt8")
    .Input("x_proj: float")
    .Input("recurrent_kernel: int8")
    .Input("projection_kernel: int8")
    .Input("sequence_lengths: int32")
    .Input("initial_h: float")
    .Input("initial_c: float")
    .Input("recurrent_scale: float")
    .Input("projection_scale: float")
    .Output("output: float")
    .Output("final_h: float")
    .Output("final_c: float")
    .Attr("direction: {'forward', 'reverse', 'bidirectional'} = 'forward'")
    .Attr("time_major: bool = false")
    .Attr("num_proj: int >= 0 = 0")
    .Attr("cell_clip: float = 0.0")
    .Attr("proj_clip: float = 0.0")
    .SetShapeFn(LstmInt8Shape)
    .Doc(R"doc(
FusedLSTMSequence with INT8 recurrent and projection weights, one float scale per row: row k of direction d is
recurrent_kernel[d, k, :] / recurrent_scale[d, k] (scale = 127 / max|row|; a zero scale is a zero row). The
arithmetic is float32: weights are converted on the fly. Inference only (no gradient).

x_proj, sequence_lengths, initial_h, initial_c, outputs and attributes: as FusedLSTMSequence.
recurrent_kernel: [D, R, 4H] int8.
projection_kernel: [D, H, num_proj] int8; [D, H, 0] when num_proj == 0.
recurrent_scale: [D, R]. projection_scale: [D, H]; [D, 0] when num_proj == 0.
)doc");

REGISTER_OP("FusedGRUSequenceInt8")
    .Input("x_proj: float")
    .Input("recurrent_kernel: int8")
    .Input("recurrent_bias: float")
    .Input("sequence_lengths: int32")
    .Input("initial_h: float")
    .Input("recurrent_scale: float")
    .Output("output: float")
    .Output("final_h: float")
    .Attr("direction: {'forward', 'reverse', 'bidirectional'} = 'forward'")
    .Attr("time_major: bool = false")
    .SetShapeFn(GruInt8Shape)
    .Doc(R"doc(
FusedGRUSequence with INT8 recurrent weights and one float scale per row (see FusedLSTMSequenceInt8).
Inference only.

recurrent_kernel: [D, H, 3H] int8. recurrent_scale: [D, H].
The other inputs, outputs and attributes: as FusedGRUSequence.
)doc");

REGISTER_OP("FusedLSTMSequence16")
    .Input("x_proj: float")
    .Input("recurrent_kernel: Tweight")
    .Input("projection_kernel: Tweight")
    .Input("sequence_lengths: int32")
    .Input("initial_h: float")
    .Input("initial_c: float")
    .Output("output: float")
    .Output("final_h: float")
    .Output("final_c: float")
    .Attr("Tweight: {half, bfloat16}")
    .Attr("direction: {'forward', 'reverse', 'bidirectional'} = 'forward'")
    .Attr("time_major: bool = false")
    .Attr("num_proj: int >= 0 = 0")
    .Attr("cell_clip: float = 0.0")
    .Attr("proj_clip: float = 0.0")
    .SetShapeFn(Lstm16Shape)
    .Doc(R"doc(
FusedLSTMSequence with 16-bit (float16 or bfloat16) recurrent and projection weights: half the weight bytes per
step. Each weight is converted exactly to float32 as it is read; the arithmetic and accumulation are float32, so
the result is that of the float op run with the 16-bit values. Inference only (no gradient).

x_proj, sequence_lengths, initial_h, initial_c, outputs and the other attributes: as FusedLSTMSequence.
recurrent_kernel: [D, R, 4H] of Tweight.
projection_kernel: [D, H, num_proj] of Tweight; [D, H, 0] when num_proj == 0.
)doc");

REGISTER_OP("FusedGRUSequence16")
    .Input("x_proj: float")
    .Input("recurrent_kernel: Tweight")
    .Input("recurrent_bias: float")
    .Input("sequence_lengths: int32")
    .Input("initial_h: float")
    .Output("output: float")
    .Output("final_h: float")
    .Attr("Tweight: {half, bfloat16}")
    .Attr("direction: {'forward', 'reverse', 'bidirectional'} = 'forward'")
    .Attr("time_major: bool = false")
    .SetShapeFn(Gru16Shape)
    .Doc(R"doc(
FusedGRUSequence with 16-bit (float16 or bfloat16) recurrent weights (see FusedLSTMSequence16). Inference only.

recurrent_kernel: [D, H, 3H] of Tweight. recurrent_bias stays float32.
The other inputs, outputs and attributes: as FusedGRUSequence.
)doc");

}  // namespace fused_rnn

namespace fused_rnn {

REGISTER_OP("FusedRnnCpuIsa")
    .Output("isa: string")
    .SetShapeFn(::tensorflow::shape_inference::ScalarShape)
    .Doc(R"doc(
The vector path the CPU kernels of this library use on this machine: "avx512vnni", "avx512", "avx2" or "portable".
isa: a string scalar.
)doc");

}  // namespace fused_rnn
