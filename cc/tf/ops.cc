// Op declarations of the fused recurrence: signatures, complete shape functions and docs. Kernels live apart
// (kernels_cpu.cc, kernels_gpu.cc). A changed signature becomes a new op (FusedLSTMSequenceV2, ...), so exported
// SavedModels keep loading.
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

// Shared by both cells: reads x_proj's batch and time dims and the recurrent kernel's [D, R, G*H].
// Out: batch, time, units (H) and the direction count; checks x_proj's last dim is D*G*H.
Status RecurrenceDims(InferenceContext* c, int gates, bool time_major, int num_dirs, DimensionHandle* batch,
                      DimensionHandle* time, DimensionHandle* units, ShapeHandle* rec_kernel) {
  ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &x));
  *batch = c->Dim(x, time_major ? 1 : 0);
  *time = c->Dim(x, time_major ? 0 : 1);
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, rec_kernel));
  DimensionHandle d;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(*rec_kernel, 0), c->MakeDim(num_dirs), &d));
  DimensionHandle gate_width = c->Dim(*rec_kernel, 2);
  if (c->ValueKnown(gate_width)) {
    const int64_t gw = c->Value(gate_width);
    if (gw % gates != 0 || gw == 0) {
      return Invalid("recurrent_kernel's last dimension must be ", gates,
                                                 " * num_units > 0, got ", gw);
    }
    *units = c->MakeDim(gw / gates);
  } else {
    *units = c->UnknownDim();
  }
  DimensionHandle x_width;
  TF_RETURN_IF_ERROR(c->Multiply(gate_width, num_dirs, &x_width));
  DimensionHandle merged;
  Status s = c->Merge(c->Dim(x, 2), x_width, &merged);
  if (!s.ok()) {
    return Invalid("x_proj's last dimension must be num_directions * ", gates,
                                               " * num_units (", c->DebugString(x_width), "), got ",
                                               c->DebugString(c->Dim(x, 2)));
  }
  return absl::OkStatus();
}

// Checks `input` is [D, batch, width] (state tensors); names the argument in the error.
Status StateShape(InferenceContext* c, int index, const char* name, int num_dirs, DimensionHandle batch,
                  DimensionHandle width) {
  ShapeHandle given;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(index), 3, &given));
  ShapeHandle want = c->MakeShape({c->MakeDim(num_dirs), batch, width});
  ShapeHandle merged;
  Status s = c->Merge(given, want, &merged);
  if (!s.ok()) {
    return Invalid(name, " must have shape ", c->DebugString(want), ", got ",
                                               c->DebugString(given));
  }
  return absl::OkStatus();
}

Status LengthsShape(InferenceContext* c, int index, DimensionHandle* batch) {
  ShapeHandle lengths;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(index), 1, &lengths));
  // Merge into a separate handle: on failure it is cleared, and `batch` is still needed for the message.
  DimensionHandle merged;
  if (!c->Merge(c->Dim(lengths, 0), *batch, &merged).ok()) {
    return Invalid("sequence_lengths must have shape [batch] = [", c->DebugString(*batch), "], got ",
                   c->DebugString(lengths));
  }
  *batch = merged;
  return absl::OkStatus();
}

Status OutputAndReserve(InferenceContext* c, bool time_major, bool is_training, int num_dirs, DimensionHandle batch,
                        DimensionHandle time, DimensionHandle width, DimensionHandle reserve_features,
                        int output_index, int reserve_index) {
  DimensionHandle out_width;
  TF_RETURN_IF_ERROR(c->Multiply(width, num_dirs, &out_width));
  c->set_output(output_index, time_major ? c->MakeShape({time, batch, out_width})
                                         : c->MakeShape({batch, time, out_width}));
  if (!is_training) {
    c->set_output(reserve_index, c->Vector(0));
    return absl::OkStatus();
  }
  DimensionHandle n;
  TF_RETURN_IF_ERROR(c->Multiply(batch, num_dirs, &n));
  TF_RETURN_IF_ERROR(c->Multiply(n, time, &n));
  TF_RETURN_IF_ERROR(c->Multiply(n, reserve_features, &n));
  c->set_output(reserve_index, c->Vector(n));
  return absl::OkStatus();
}

// The dims of the LSTM ops' common inputs (0..5), checked; shared by the forward and the gradient op.
struct RnnDims {
  bool time_major = false;
  int dirs = 1;
  DimensionHandle batch, time, units, width;
};

Status LstmInputDims(InferenceContext* c, RnnDims* dims) {
  std::string direction;
  bool time_major;
  int num_proj;
  float cell_clip, proj_clip;
  TF_RETURN_IF_ERROR(c->GetAttr("direction", &direction));
  TF_RETURN_IF_ERROR(c->GetAttr("time_major", &time_major));
  TF_RETURN_IF_ERROR(c->GetAttr("num_proj", &num_proj));
  TF_RETURN_IF_ERROR(c->GetAttr("cell_clip", &cell_clip));
  TF_RETURN_IF_ERROR(c->GetAttr("proj_clip", &proj_clip));
  if (num_proj == 0 && proj_clip > 0.f) {
    return Invalid("proj_clip needs num_proj > 0");
  }
  const int dirs = NumDirs(direction);
  DimensionHandle batch, time, units;
  ShapeHandle rec;
  TF_RETURN_IF_ERROR(RecurrenceDims(c, 4, time_major, dirs, &batch, &time, &units, &rec));
  DimensionHandle width = num_proj > 0 ? c->MakeDim(num_proj) : units;
  DimensionHandle merged;
  if (!c->Merge(c->Dim(rec, 1), width, &merged).ok()) {
    return Invalid("recurrent_kernel must have shape [num_directions, ",
                                               num_proj > 0 ? "num_proj" : "num_units", ", 4 * num_units], got ",
                                               c->DebugString(rec));
  }
  ShapeHandle proj;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 3, &proj));
  ShapeHandle proj_want = c->MakeShape({c->MakeDim(dirs), num_proj > 0 ? units : c->UnknownDim(), c->MakeDim(num_proj)});
  ShapeHandle proj_merged;
  if (!c->Merge(proj, proj_want, &proj_merged).ok()) {
    return Invalid("projection_kernel must have shape ", c->DebugString(proj_want),
                                               ", got ", c->DebugString(proj));
  }
  TF_RETURN_IF_ERROR(LengthsShape(c, 3, &batch));
  TF_RETURN_IF_ERROR(StateShape(c, 4, "initial_h", dirs, batch, width));
  TF_RETURN_IF_ERROR(StateShape(c, 5, "initial_c", dirs, batch, units));
  dims->time_major = time_major;
  dims->dirs = dirs;
  dims->batch = batch;
  dims->time = time;
  dims->units = units;
  dims->width = width;
  return absl::OkStatus();
}

Status LstmShape(InferenceContext* c) {
  bool is_training;
  int num_proj;
  TF_RETURN_IF_ERROR(c->GetAttr("is_training", &is_training));
  TF_RETURN_IF_ERROR(c->GetAttr("num_proj", &num_proj));
  RnnDims d;
  TF_RETURN_IF_ERROR(LstmInputDims(c, &d));
  DimensionHandle features;
  TF_RETURN_IF_ERROR(c->Multiply(d.units, 5, &features));
  TF_RETURN_IF_ERROR(c->Add(features, num_proj, &features));
  TF_RETURN_IF_ERROR(OutputAndReserve(c, d.time_major, is_training, d.dirs, d.batch, d.time, d.width, features, 0, 3));
  c->set_output(1, c->MakeShape({c->MakeDim(d.dirs), d.batch, d.width}));
  c->set_output(2, c->MakeShape({c->MakeDim(d.dirs), d.batch, d.units}));
  return absl::OkStatus();
}

// Checks that input `index` has the forward output's shape ([B, T, D*R] or time-major); names it on error.
Status OutputLike(InferenceContext* c, int index, const char* name, const RnnDims& d) {
  DimensionHandle out_width;
  TF_RETURN_IF_ERROR(c->Multiply(d.width, d.dirs, &out_width));
  ShapeHandle want = d.time_major ? c->MakeShape({d.time, d.batch, out_width})
                                  : c->MakeShape({d.batch, d.time, out_width});
  ShapeHandle given;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(index), 3, &given));
  ShapeHandle merged;
  if (!c->Merge(given, want, &merged).ok()) {
    return Invalid(name, " must have the forward output's shape ", c->DebugString(want), ", got ",
                   c->DebugString(given));
  }
  return absl::OkStatus();
}

// Gradient ops: inputs 0.. as the forward, then output, reserve, d_output, d_final_h(, d_final_c); the
// gradients have the shapes of the forward's float inputs.
Status LstmGradShape(InferenceContext* c) {
  RnnDims d;
  TF_RETURN_IF_ERROR(LstmInputDims(c, &d));
  TF_RETURN_IF_ERROR(OutputLike(c, 6, "output", d));
  ShapeHandle reserve;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(7), 1, &reserve));
  TF_RETURN_IF_ERROR(OutputLike(c, 8, "d_output", d));
  TF_RETURN_IF_ERROR(StateShape(c, 9, "d_final_h", d.dirs, d.batch, d.width));
  TF_RETURN_IF_ERROR(StateShape(c, 10, "d_final_c", d.dirs, d.batch, d.units));
  c->set_output(0, c->input(0));
  c->set_output(1, c->input(1));
  c->set_output(2, c->input(2));
  c->set_output(3, c->MakeShape({c->MakeDim(d.dirs), d.batch, d.width}));
  c->set_output(4, c->MakeShape({c->MakeDim(d.dirs), d.batch, d.units}));
  return absl::OkStatus();
}

Status GruInputDims(InferenceContext* c, RnnDims* dims) {
  std::string direction;
  bool time_major;
  TF_RETURN_IF_ERROR(c->GetAttr("direction", &direction));
  TF_RETURN_IF_ERROR(c->GetAttr("time_major", &time_major));
  const int dirs = NumDirs(direction);
  DimensionHandle batch, time, units;
  ShapeHandle rec;
  TF_RETURN_IF_ERROR(RecurrenceDims(c, 3, time_major, dirs, &batch, &time, &units, &rec));
  DimensionHandle merged;
  if (!c->Merge(c->Dim(rec, 1), units, &merged).ok()) {
    return Invalid("recurrent_kernel must have shape [num_directions, num_units, ",
                                               "3 * num_units], got ", c->DebugString(rec));
  }
  ShapeHandle bias;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &bias));
  ShapeHandle bias_want = c->MakeShape({c->MakeDim(dirs), c->Dim(rec, 2)});
  ShapeHandle bias_merged;
  if (!c->Merge(bias, bias_want, &bias_merged).ok()) {
    return Invalid("recurrent_bias must have shape ", c->DebugString(bias_want),
                                               ", got ", c->DebugString(bias));
  }
  TF_RETURN_IF_ERROR(LengthsShape(c, 3, &batch));
  TF_RETURN_IF_ERROR(StateShape(c, 4, "initial_h", dirs, batch, units));
  dims->time_major = time_major;
  dims->dirs = dirs;
  dims->batch = batch;
  dims->time = time;
  dims->units = units;
  dims->width = units;
  return absl::OkStatus();
}

Status GruShape(InferenceContext* c) {
  bool is_training;
  TF_RETURN_IF_ERROR(c->GetAttr("is_training", &is_training));
  RnnDims d;
  TF_RETURN_IF_ERROR(GruInputDims(c, &d));
  DimensionHandle features;
  TF_RETURN_IF_ERROR(c->Multiply(d.units, 4, &features));
  TF_RETURN_IF_ERROR(OutputAndReserve(c, d.time_major, is_training, d.dirs, d.batch, d.time, d.units, features, 0, 2));
  c->set_output(1, c->MakeShape({c->MakeDim(d.dirs), d.batch, d.units}));
  return absl::OkStatus();
}

// INT8 ops: inputs 0.. as the float forward (the kernels int8), then the per-row scales.
Status ScaleShape(InferenceContext* c, int index, const char* name, int dirs, DimensionHandle rows) {
  ShapeHandle given;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(index), 2, &given));
  ShapeHandle want = c->MakeShape({c->MakeDim(dirs), rows});
  ShapeHandle merged;
  if (!c->Merge(given, want, &merged).ok()) {
    return Invalid(name, " must have shape ", c->DebugString(want), ", got ", c->DebugString(given));
  }
  return absl::OkStatus();
}

Status LstmInt8Shape(InferenceContext* c) {
  int num_proj;
  TF_RETURN_IF_ERROR(c->GetAttr("num_proj", &num_proj));
  RnnDims d;
  TF_RETURN_IF_ERROR(LstmInputDims(c, &d));
  TF_RETURN_IF_ERROR(ScaleShape(c, 6, "recurrent_scale", d.dirs, d.width));
  TF_RETURN_IF_ERROR(ScaleShape(c, 7, "projection_scale", d.dirs, num_proj > 0 ? d.units : c->MakeDim(0)));
  DimensionHandle out_width;
  TF_RETURN_IF_ERROR(c->Multiply(d.width, d.dirs, &out_width));
  c->set_output(0, d.time_major ? c->MakeShape({d.time, d.batch, out_width}) : c->MakeShape({d.batch, d.time, out_width}));
  c->set_output(1, c->MakeShape({c->MakeDim(d.dirs), d.batch, d.width}));
  c->set_output(2, c->MakeShape({c->MakeDim(d.dirs), d.batch, d.units}));
  return absl::OkStatus();
}

Status GruInt8Shape(InferenceContext* c) {
  RnnDims d;
  TF_RETURN_IF_ERROR(GruInputDims(c, &d));
  TF_RETURN_IF_ERROR(ScaleShape(c, 5, "recurrent_scale", d.dirs, d.units));
  DimensionHandle out_width;
  TF_RETURN_IF_ERROR(c->Multiply(d.width, d.dirs, &out_width));
  c->set_output(0, d.time_major ? c->MakeShape({d.time, d.batch, out_width}) : c->MakeShape({d.batch, d.time, out_width}));
  c->set_output(1, c->MakeShape({c->MakeDim(d.dirs), d.batch, d.units}));
  return absl::OkStatus();
}

// 16-bit weight ops: the float forward's inputs, the kernels 16-bit; no reserve output (inference only).
Status Lstm16Shape(InferenceContext* c) {
  RnnDims d;
  TF_RETURN_IF_ERROR(LstmInputDims(c, &d));
  DimensionHandle out_width;
  TF_RETURN_IF_ERROR(c->Multiply(d.width, d.dirs, &out_width));
  c->set_output(0, d.time_major ? c->MakeShape({d.time, d.batch, out_width}) : c->MakeShape({d.batch, d.time, out_width}));
  c->set_output(1, c->MakeShape({c->MakeDim(d.dirs), d.batch, d.width}));
  c->set_output(2, c->MakeShape({c->MakeDim(d.dirs), d.batch, d.units}));
  return absl::OkStatus();
}

Status Gru16Shape(InferenceContext* c) {
  RnnDims d;
  TF_RETURN_IF_ERROR(GruInputDims(c, &d));
  DimensionHandle out_width;
  TF_RETURN_IF_ERROR(c->Multiply(d.width, d.dirs, &out_width));
  c->set_output(0, d.time_major ? c->MakeShape({d.time, d.batch, out_width}) : c->MakeShape({d.batch, d.time, out_width}));
  c->set_output(1, c->MakeShape({c->MakeDim(d.dirs), d.batch, d.units}));
  return absl::OkStatus();
}

Status GruGradShape(InferenceContext* c) {
  RnnDims d;
  TF_RETURN_IF_ERROR(GruInputDims(c, &d));
  TF_RETURN_IF_ERROR(OutputLike(c, 5, "output", d));
  ShapeHandle reserve;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(6), 1, &reserve));
  TF_RETURN_IF_ERROR(OutputLike(c, 7, "d_output", d));
  TF_RETURN_IF_ERROR(StateShape(c, 8, "d_final_h", d.dirs, d.batch, d.units));
  c->set_output(0, c->input(0));
  c->set_output(1, c->input(1));
  c->set_output(2, c->input(2));
  c->set_output(3, c->MakeShape({c->MakeDim(d.dirs), d.batch, d.units}));
  return absl::OkStatus();
}

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
projection_kernel: [D, H, num_proj]; [D, H, 0] (or [D, 0, 0]) when num_proj == 0.
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
