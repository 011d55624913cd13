#include "cc/tf/rnn_args.h"

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <limits>

#include "absl/strings/str_join.h"

namespace fused_rnn {

using absl::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;

void RnnAttrs::Read(tensorflow::OpKernelConstruction* ctx, CellType cell_type, bool has_is_training) {
  cell = cell_type;
  std::string dir;
  OP_REQUIRES_OK(ctx, ctx->GetAttr("direction", &dir));
  direction = dir == "bidirectional" ? Direction::kBidirectional
                                     : (dir == "reverse" ? Direction::kReverse : Direction::kForward);
  OP_REQUIRES_OK(ctx, ctx->GetAttr("time_major", &time_major));
  if (has_is_training) OP_REQUIRES_OK(ctx, ctx->GetAttr("is_training", &is_training));
  if (cell == CellType::kLstm) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_proj", &num_proj));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("cell_clip", &cell_clip));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("proj_clip", &proj_clip));
    OP_REQUIRES(ctx, cell_clip >= 0.f && proj_clip >= 0.f && !IsSubnormal(cell_clip) && !IsSubnormal(proj_clip),
                Invalid("cell_clip and proj_clip must be 0 (no clip) or a normal float >= FLT_MIN (1.18e-38), got ",
                        FloatForMessage(cell_clip), " and ", FloatForMessage(proj_clip)));
    OP_REQUIRES(ctx, num_proj > 0 || proj_clip == 0.f, Invalid("proj_clip needs num_proj > 0"));
  }
}

namespace {
Status ExpectShape(const char* name, const Tensor& t, const TensorShape& want) {
  if (t.shape() != want) {
    return Invalid(name, " must have shape ", want.DebugString(), ", got ", t.shape().DebugString());
  }
  return absl::OkStatus();
}

// The same check against dims taken from other inputs, before they are known to be sane: a TensorShape of them
// would abort the process when their product overflows (zero-sized inputs can carry any dims, e.g. [1, 0, 2^33]).
Status ExpectDims(const char* name, const Tensor& t, std::initializer_list<int64_t> want) {
  bool same = t.dims() == static_cast<int>(want.size());
  int i = 0;
  for (int64_t d : want) same = same && t.dim_size(i++) == d;
  if (!same) return Invalid(name, " must have shape [", absl::StrJoin(want, ","), "], got ", t.shape().DebugString());
  return absl::OkStatus();
}
}  // namespace

Status ValidateRnnInputs(tensorflow::OpKernelContext* ctx, const RnnAttrs& a, RnnInputs* in, RnnShape* s) {
  const bool lstm = a.cell == CellType::kLstm;
  TF_RETURN_IF_ERROR(ctx->input("x_proj", &in->x_proj));
  TF_RETURN_IF_ERROR(ctx->input("recurrent_kernel", &in->recurrent_kernel));
  TF_RETURN_IF_ERROR(ctx->input("sequence_lengths", &in->sequence_lengths));
  TF_RETURN_IF_ERROR(ctx->input("initial_h", &in->initial_h));
  in->projection_kernel = in->recurrent_bias = in->initial_c = nullptr;
  if (lstm) {
    TF_RETURN_IF_ERROR(ctx->input("projection_kernel", &in->projection_kernel));
    TF_RETURN_IF_ERROR(ctx->input("initial_c", &in->initial_c));
  } else {
    TF_RETURN_IF_ERROR(ctx->input("recurrent_bias", &in->recurrent_bias));
  }
  s->cell = a.cell;
  s->direction = a.direction;
  s->time_major = a.time_major;
  s->cell_clip = a.cell_clip;
  s->proj_clip = a.proj_clip;
  const int64_t D = s->num_dirs(), G = s->num_gates();

  const Tensor& x = *in->x_proj;
  if (x.dims() != 3) return Invalid("x_proj must be rank 3, got shape ", x.shape().DebugString());
  s->batch = x.dim_size(a.time_major ? 1 : 0);
  s->max_time = x.dim_size(a.time_major ? 0 : 1);
  if (s->max_time > std::numeric_limits<int32_t>::max()) return Invalid("x_proj has too many timesteps");

  const Tensor& rk = *in->recurrent_kernel;
  if (rk.dims() != 3 || rk.dim_size(0) != D || rk.dim_size(2) % G != 0 || rk.dim_size(2) == 0) {
    return Invalid("recurrent_kernel must have shape [", D, ", recurrent width, ", G,
                           " * num_units] with num_units > 0, got ", rk.shape().DebugString());
  }
  s->num_units = rk.dim_size(2) / G;
  s->num_proj = lstm ? a.num_proj : 0;
  const int64_t H = s->num_units, R = s->recurrent_width();
  TF_RETURN_IF_ERROR(ExpectDims("recurrent_kernel", rk, {D, R, G * H}));
  if (x.dim_size(2) != D * G * H) {
    return Invalid("x_proj's last dimension must be num_directions * ", G, " * num_units = ", D * G * H,
                           ", got ", x.dim_size(2));
  }
  if (lstm) {
    const Tensor& p = *in->projection_kernel;
    if (s->num_proj > 0) {
      TF_RETURN_IF_ERROR(ExpectDims("projection_kernel", p, {D, H, s->num_proj}));
    } else if (p.dims() != 3 || p.dim_size(0) != D || p.dim_size(1) != H || p.dim_size(2) != 0) {
      return Invalid("projection_kernel must be an empty [", D, ", ", H, ", 0] tensor when num_proj == 0, got ",
                             p.shape().DebugString());
    }
    TF_RETURN_IF_ERROR(ExpectDims("initial_c", *in->initial_c, {D, s->batch, H}));
  } else {
    TF_RETURN_IF_ERROR(ExpectDims("recurrent_bias", *in->recurrent_bias, {D, G * H}));
  }
  TF_RETURN_IF_ERROR(ExpectDims("sequence_lengths", *in->sequence_lengths, {s->batch}));
  TF_RETURN_IF_ERROR(ExpectDims("initial_h", *in->initial_h, {D, s->batch, R}));
  if (const char* err = CheckShape(*s)) return Invalid(err);
  return absl::OkStatus();
}

Status ValidateInt8Scales(tensorflow::OpKernelContext* ctx, RnnInputs* in, RnnShape* s, bool check_values) {
  const int64_t D = s->num_dirs();
  TF_RETURN_IF_ERROR(ctx->input("recurrent_scale", &in->recurrent_scale));
  TF_RETURN_IF_ERROR(ExpectShape("recurrent_scale", *in->recurrent_scale, TensorShape({D, s->recurrent_width()})));
  if (s->cell == CellType::kLstm) {
    TF_RETURN_IF_ERROR(ctx->input("projection_scale", &in->projection_scale));
    TF_RETURN_IF_ERROR(ExpectShape("projection_scale", *in->projection_scale,
                                   TensorShape({D, s->num_proj > 0 ? s->num_units : 0})));
  }
  // A negative, NaN or infinite scale is not one the quantizer makes (127 / max|row|, or 0 for a zero row).
  for (const Tensor* t : {in->recurrent_scale, in->projection_scale}) {
    if (!check_values) break;
    if (t == nullptr) continue;
    const auto v = t->flat<float>();
    for (int64_t i = 0; i < v.size(); ++i) {
      if (!(v(i) >= 0.f) || v(i) == std::numeric_limits<float>::infinity() || IsSubnormal(v(i))) {
        return Invalid(t == in->recurrent_scale ? "recurrent_scale" : "projection_scale", "[", i, "] = ", FloatForMessage(v(i)),
                       " is not a scale the quantizer makes (0, or a finite normal float > 0)");
      }
    }
  }
  s->int8_weights = true;
  return absl::OkStatus();
}

Status Validate16BitWeights(const RnnInputs& in, RnnShape* s) {
  const tensorflow::DataType dt = in.recurrent_kernel->dtype();
  if (dt != tensorflow::DT_HALF && dt != tensorflow::DT_BFLOAT16) {
    return Invalid("recurrent_kernel must be float16 or bfloat16, got ", tensorflow::DataTypeString(dt));
  }
  if (in.projection_kernel && in.projection_kernel->dtype() != dt) {
    return Invalid("projection_kernel must have recurrent_kernel's dtype ", tensorflow::DataTypeString(dt), ", got ",
                   tensorflow::DataTypeString(in.projection_kernel->dtype()));
  }
  s->weight16 = dt == tensorflow::DT_HALF ? Weight16::kFloat16 : Weight16::kBFloat16;
  return absl::OkStatus();
}

void ZeroReservePastLengths(const RnnShape& s, const int32_t* lengths, float* reserve) {
  const int64_t D = s.num_dirs(), B = s.batch, T = s.max_time, F = ReserveFeatures(s);
  for (int64_t d = 0; d < D; ++d) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t len = lengths[b];
      if (len < T) std::fill_n(reserve + ((d * B + b) * T + len) * F, (T - len) * F, 0.f);
    }
  }
}

bool AnyShorterThanMaxTime(const RnnShape& s, const int32_t* lengths) {
  for (int64_t b = 0; b < s.batch; ++b)
    if (lengths[b] < s.max_time) return true;
  return false;
}

Status CheckLengths(const int32_t* lengths, int64_t batch, int64_t max_time) {
  const int64_t b = FirstBadLength(lengths, batch, max_time);
  if (b >= 0) {
    return Invalid("sequence_lengths[", b, "] = ", lengths[b], " is outside [0, ", max_time,
                   "] (max_time of x_proj)");
  }
  return absl::OkStatus();
}

absl::Status AllocateRnnOutputs(tensorflow::OpKernelContext* ctx, const RnnShape& s, bool is_training,
                                RnnOutputs* out, bool has_reserve_output) {
  const int64_t D = s.num_dirs(), B = s.batch, T = s.max_time, R = s.recurrent_width(), H = s.num_units;
  int index = 0;
  TF_RETURN_IF_ERROR(ctx->allocate_output(index++, s.time_major ? TensorShape({T, B, D * R}) : TensorShape({B, T, D * R}),
                                          &out->output));
  TF_RETURN_IF_ERROR(ctx->allocate_output(index++, TensorShape({D, B, R}), &out->final_h));
  if (s.cell == CellType::kLstm) {
    TF_RETURN_IF_ERROR(ctx->allocate_output(index++, TensorShape({D, B, H}), &out->final_c));
  }
  if (!has_reserve_output) return absl::OkStatus();
  return ctx->allocate_output(index++, TensorShape({is_training ? ReserveFloats(s) : 0}), &out->reserve);
}

RnnForwardArgs MakeForwardArgs(const RnnShape& s, const RnnInputs& in, const RnnOutputs& out,
                               const int32_t* lengths, bool is_training) {
  const bool lstm = s.cell == CellType::kLstm;
  RnnForwardArgs args;
  args.x_proj = in.x_proj->flat<float>().data();
  if (s.int8_weights) {
    args.recurrent_kernel_q8 = in.recurrent_kernel->flat<int8_t>().data();
    args.recurrent_scale = in.recurrent_scale->flat<float>().data();
    args.projection_kernel_q8 = s.num_proj > 0 ? in.projection_kernel->flat<int8_t>().data() : nullptr;
    args.projection_scale = s.num_proj > 0 ? in.projection_scale->flat<float>().data() : nullptr;
  } else if (s.weight16 != Weight16::kNone) {
    // Half and bfloat16 tensors hold their 16-bit patterns; the core reads them as such.
    args.recurrent_kernel_16 = reinterpret_cast<const uint16_t*>(in.recurrent_kernel->tensor_data().data());
    args.projection_kernel_16 =
        s.num_proj > 0 ? reinterpret_cast<const uint16_t*>(in.projection_kernel->tensor_data().data()) : nullptr;
  } else {
    args.recurrent_kernel = in.recurrent_kernel->flat<float>().data();
    args.projection_kernel = s.num_proj > 0 ? in.projection_kernel->flat<float>().data() : nullptr;
  }
  args.recurrent_bias = in.recurrent_bias ? in.recurrent_bias->flat<float>().data() : nullptr;
  args.sequence_lengths = lengths;
  args.initial_h = in.initial_h->flat<float>().data();
  args.initial_c = lstm ? in.initial_c->flat<float>().data() : nullptr;
  args.output = out.output->flat<float>().data();
  args.final_h = out.final_h->flat<float>().data();
  args.final_c = lstm ? out.final_c->flat<float>().data() : nullptr;
  args.reserve = is_training ? out.reserve->flat<float>().data() : nullptr;
  return args;
}

Status ValidateRnnGradInputs(tensorflow::OpKernelContext* ctx, const RnnShape& s, RnnGradTensors* g) {
  const bool lstm = s.cell == CellType::kLstm;
  const int64_t D = s.num_dirs(), B = s.batch, T = s.max_time, R = s.recurrent_width(), H = s.num_units;
  TF_RETURN_IF_ERROR(ctx->input("output", &g->output));
  TF_RETURN_IF_ERROR(ctx->input("reserve", &g->reserve));
  TF_RETURN_IF_ERROR(ctx->input("d_output", &g->d_output));
  TF_RETURN_IF_ERROR(ctx->input("d_final_h", &g->d_final_h));
  const TensorShape out_shape = s.time_major ? TensorShape({T, B, D * R}) : TensorShape({B, T, D * R});
  TF_RETURN_IF_ERROR(ExpectShape("output", *g->output, out_shape));
  TF_RETURN_IF_ERROR(ExpectShape("d_output", *g->d_output, out_shape));
  TF_RETURN_IF_ERROR(ExpectShape("d_final_h", *g->d_final_h, TensorShape({D, B, R})));
  if (lstm) {
    TF_RETURN_IF_ERROR(ctx->input("d_final_c", &g->d_final_c));
    TF_RETURN_IF_ERROR(ExpectShape("d_final_c", *g->d_final_c, TensorShape({D, B, H})));
  }
  if (g->reserve->shape() != TensorShape({ReserveFloats(s)})) {
    return Invalid("reserve must be the forward's reserve of shape [", ReserveFloats(s),
                   "] (run the forward with is_training=true), got ", g->reserve->shape().DebugString());
  }
  return absl::OkStatus();
}

Status AllocateRnnGrads(tensorflow::OpKernelContext* ctx, const RnnShape& s, const RnnInputs& in,
                        RnnGradTensors* g) {
  const bool lstm = s.cell == CellType::kLstm;
  const int64_t D = s.num_dirs(), B = s.batch, R = s.recurrent_width(), H = s.num_units;
  int index = 0;
  TF_RETURN_IF_ERROR(ctx->allocate_output(index++, in.x_proj->shape(), &g->d_x_proj));
  TF_RETURN_IF_ERROR(ctx->allocate_output(index++, in.recurrent_kernel->shape(), &g->d_recurrent_kernel));
  if (lstm) {
    TF_RETURN_IF_ERROR(ctx->allocate_output(index++, in.projection_kernel->shape(), &g->d_projection_kernel));
  } else {
    TF_RETURN_IF_ERROR(ctx->allocate_output(index++, in.recurrent_bias->shape(), &g->d_recurrent_bias));
  }
  TF_RETURN_IF_ERROR(ctx->allocate_output(index++, TensorShape({D, B, R}), &g->d_initial_h));
  if (lstm) TF_RETURN_IF_ERROR(ctx->allocate_output(index++, TensorShape({D, B, H}), &g->d_initial_c));
  return absl::OkStatus();
}

RnnBackwardArgs MakeBackwardArgs(const RnnShape& s, const RnnInputs& in, const RnnGradTensors& g,
                                 const int32_t* lengths) {
  const bool lstm = s.cell == CellType::kLstm;
  auto ptr = [](const Tensor* t) { return t ? t->flat<float>().data() : nullptr; };
  auto mut = [](Tensor* t) { return t ? t->flat<float>().data() : nullptr; };
  RnnBackwardArgs a;
  a.recurrent_kernel = ptr(in.recurrent_kernel);
  a.projection_kernel = s.num_proj > 0 ? ptr(in.projection_kernel) : nullptr;
  a.sequence_lengths = lengths;
  a.initial_h = ptr(in.initial_h);
  a.initial_c = lstm ? ptr(in.initial_c) : nullptr;
  a.output = ptr(g.output);
  a.reserve = ptr(g.reserve);
  a.d_output = ptr(g.d_output);
  a.d_final_h = ptr(g.d_final_h);
  a.d_final_c = lstm ? ptr(g.d_final_c) : nullptr;
  a.d_x_proj = mut(g.d_x_proj);
  a.d_recurrent_kernel = mut(g.d_recurrent_kernel);
  a.d_recurrent_bias = lstm ? nullptr : mut(g.d_recurrent_bias);
  a.d_projection_kernel = s.num_proj > 0 ? mut(g.d_projection_kernel) : nullptr;
  a.d_initial_h = mut(g.d_initial_h);
  a.d_initial_c = lstm ? mut(g.d_initial_c) : nullptr;
  return a;
}

Status PrepareForward(tensorflow::OpKernelContext* ctx, const RnnAttrs& attrs, RecurrentWeights weights,
                      bool check_scale_values, RnnInputs* in, RnnShape* s, RnnOutputs* out, const int32_t** lengths,
                      bool* training) {
  TF_RETURN_IF_ERROR(ValidateRnnInputs(ctx, attrs, in, s));
  if (weights == RecurrentWeights::kInt8) TF_RETURN_IF_ERROR(ValidateInt8Scales(ctx, in, s, check_scale_values));
  if (weights == RecurrentWeights::k16Bit) TF_RETURN_IF_ERROR(Validate16BitWeights(*in, s));
  *lengths = in->sequence_lengths->flat<int32_t>().data();
  TF_RETURN_IF_ERROR(CheckLengths(*lengths, s->batch, s->max_time));
  *training = weights == RecurrentWeights::kFloat32 && attrs.is_training;
  return AllocateRnnOutputs(ctx, *s, *training, out, /*has_reserve_output=*/weights == RecurrentWeights::kFloat32);
}

}  // namespace fused_rnn
