// Shape contract and sizes of the core, shared by the CPU and CUDA paths.
#include "cc/core/fused_rnn.h"

namespace fused_rnn {

const char* CheckShape(const RnnShape& s) {
  if (s.max_time < 0) return "max_time must be >= 0";
  if (s.batch < 0) return "batch must be >= 0";
  if (s.num_units < 1) return "num_units must be >= 1";
  if (s.num_proj < 0) return "num_proj must be >= 0";
  if (s.cell == CellType::kGru && s.num_proj != 0) return "a GRU has no projection";
  if (s.cell == CellType::kGru && (s.cell_clip > 0.f || s.proj_clip > 0.f)) return "a GRU has no clips";
  if (s.num_proj == 0 && s.proj_clip > 0.f) return "proj_clip needs a projection";
  if (s.int8_weights && s.weight16 != Weight16::kNone) return "int8_weights and weight16 exclude each other";
  if (!(s.cell_clip >= 0.f) || !(s.proj_clip >= 0.f)) return "clips must be >= 0 (0: no clip)";
  return nullptr;
}

int64_t FirstBadLength(const int32_t* lengths, int64_t batch, int64_t max_time) {
  for (int64_t b = 0; b < batch; ++b) {
    if (lengths[b] < 0 || lengths[b] > max_time) return b;
  }
  return -1;
}

int64_t ReserveFeatures(const RnnShape& s) {
  if (s.cell == CellType::kGru) return 4 * s.num_units;
  return 5 * s.num_units + s.num_proj;
}

int64_t ReserveFloats(const RnnShape& s) {
  return static_cast<int64_t>(s.num_dirs()) * s.batch * s.max_time * ReserveFeatures(s);
}

}  // namespace fused_rnn
