// Internal contract between the ISA-independent CPU driver (fused_rnn_cpu.cc) and the per-ISA step kernels
// (cpu_kernels_<isa>.cc). Not part of the public core API.
#ifndef FUSED_RNN_CORE_CPU_INTERNAL_H_
#define FUSED_RNN_CORE_CPU_INTERNAL_H_

#include <cstdint>
#include <functional>

#include "cc/core/fused_rnn.h"

namespace fused_rnn {
namespace cpu {

// Hidden units (and projection columns) are processed in blocks of 16: one AVX-512 vector, two AVX2 vectors.
constexpr int64_t kBlock = 16;

// INT8 products on VNNI accumulate 4 planes of u8 * s8 products (at most 255 * 127 each) in int32: exact up to
// K = 66,000. Larger K runs the float conversion path.
constexpr int64_t kMaxVnniK = 65536;
// The fixed-point state stays within 2^30 (ChainCtx::q8_vnni): a factor of 2 below int32's range for rounding.
constexpr int kVnniFixBits = 30;

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The last unit block, with r = H % 16 < 16 units, packs its G gates' r columns side by side (gate-major: column
// g * r + i is unit i of gate g; zero past G * r up to a multiple of 16) when that takes fewer 16-wide vectors than
// G padded ones. H=100: 4 units x 4 gates in one vector instead of four, so the step's product covers 400 columns,
// not 448. Returns the packed width in blocks of 16 (1 .. G-1), or 0 when the tail is laid out like a full block.
inline int PackedTailBlocks(int64_t H, int64_t G) {
  const int64_t r = H % kBlock;
  if (r == 0) return 0;
  const int64_t n = CeilDiv(G * r, kBlock);
  return n < G ? static_cast<int>(n) : 0;
}

// p + n, or null for a null p: an empty tensor (T == 0) may come as a null pointer, and offsetting null is
// undefined behaviour (UBSan found it through tools/fuzz_core.sh).
template <class V>
inline V* Offset(V* p, int64_t n) {
  return p == nullptr ? nullptr : p + n;
}

// Everything one direction ("chain") of the recurrence needs, with strides resolved for the layout.
struct ChainCtx {
  int dir = 0;
  bool reverse = false;
  int64_t T = 0, B = 0, H = 0, P = 0, R = 0, G = 0;
  float cell_clip = 0.f, proj_clip = 0.f;
  // x_proj row of (b, t) for this direction: x_proj + b * x_b_stride + t * x_t_stride (+ gate * H + unit).
  const float* x_proj = nullptr;
  int64_t x_b_stride = 0, x_t_stride = 0;
  float* output = nullptr;  // already offset to this direction's R columns
  int64_t out_b_stride = 0, out_t_stride = 0;
  const int32_t* lengths = nullptr;  // never null here
  const float* rec_bias = nullptr;   // [G*H] or null
  // Packed weights, panel-major: panel u (units u*16..u*16+15) is [R][G*16] contiguous, zero-padded past H; with
  // tail_blocks > 0 the last panel is [R][tail_blocks*16] instead, in PackedTailBlocks' layout.
  const float* w_packed = nullptr;
  int tail_blocks = 0;
  // Packed projection, panel-major: panel q (columns q*16..) is [H][16], zero-padded past P.
  const float* p_packed = nullptr;
  // INT8 weights instead (same panel layout, int8), and 1/scale per row of U ([R]) and of P ([H]).
  const int8_t* wq_packed = nullptr;
  const int8_t* pq_packed = nullptr;
  const float* w_inv_scale = nullptr;
  const float* p_inv_scale = nullptr;
  // INT8 as exact integer products (kernels with int8_vnni, K <= kMaxVnniK). The product h @ Q of the
  // dequantized weights is sum_k (h[k] / scale[k]) * q[k][j]; h[k] / scale[k] is rounded to a fixed-point integer
  // X[k] = round(h[k] * fix[k]) with |X| <= 2^30 (fix[k] = 2^e / scale[k], e from a bound on |h| known before the
  // step: 31 bits against the max, where float32 keeps 24), and the dot product sum_k X[k] q[k][j] is computed
  // exactly in int32 by vpdpbusd over the four bytes of X + 2^31 ("planes"), then scaled back by 2^-e.
  // Panels are [ceil(K/4)][cols][4]: the 4 consecutive k of one column in one 32-bit lane.
  bool q8_vnni = false;
  int64_t R4 = 0, H4 = 0;               // R and H rounded up to 4: bytes per plane
  const int32_t* w_qsum128 = nullptr;   // 128 * sum_k q[k][col] per packed U column ([unit blocks][G*16])
  const int32_t* p_qsum128 = nullptr;   // the same for P ([projection blocks][16])
  uint8_t* h_planes[2] = {nullptr, nullptr};  // [B][4][R4]: the planes of h_buf[s % 2]
  uint8_t* m_planes = nullptr;          // [B][4][H4]: the planes of m (projection LSTM)
  const float* h_fix = nullptr;         // [R]: fix[k] for the h that steps write (bound: 1, clip, ...)
  const float* m_fix = nullptr;         // [H]: for m (|m| <= 1)
  float h_unfix_exp[2] = {0.f, 0.f};    // -e of the planes step 0 reads (from initial_h) and later steps read
  float m_unfix_exp = 0.f;
  // Per row: the first phase (2 * step, +1 for the projection) that must not use the planes because a state it
  // reads is NaN or infinite (a fixed-point integer cannot carry them); that row runs the float product from then
  // on. Phase-stamped so that a stage never sees a flag raised by a concurrent slice of the same stage.
  int32_t* float_from_phase = nullptr;
  // 16-bit weights instead (same panel layout, float16 or bfloat16 bits).
  const uint16_t* w16_packed = nullptr;
  const uint16_t* p16_packed = nullptr;
  bool w16_bf16 = false;
  float* h_buf[2] = {nullptr, nullptr};  // [B][R] each; step s reads h_buf[s % 2], writes h_buf[(s + 1) % 2]
  float* c_state = nullptr;              // [B][H], LSTM
  float* m_buf = nullptr;                // [B][H], projection LSTM: o * tanh(c) before the projection
  float* final_h = nullptr;              // [B][R] of this direction
  float* final_c = nullptr;              // [B][H]
  float* reserve = nullptr;              // [B][T][F] of this direction, or null
  int64_t reserve_features = 0;
  int64_t num_unit_blocks = 0, num_proj_blocks = 0;
};

// One direction of the backward pass (see CpuBackward). Positions n = b * T + t index the per-step records.
struct BwdCtx {
  bool reverse = false;
  int64_t T = 0, B = 0, H = 0, P = 0, R = 0, G = 0, max_len = 0;
  float cell_clip = 0.f, proj_clip = 0.f;
  const int32_t* lengths = nullptr;
  const float* output = nullptr;    // this direction's columns of the forward output
  const float* d_output = nullptr;  // same layout
  int64_t out_b_stride = 0, out_t_stride = 0;
  const float* reserve = nullptr;   // [B][T][F] of this direction
  int64_t reserve_features = 0;
  const float* initial_h = nullptr;  // [B][R]
  const float* initial_c = nullptr;  // [B][H]
  float* d_x = nullptr;              // this direction's G*H columns of d_x_proj
  int64_t x_b_stride = 0, x_t_stride = 0;
  const float* ut_packed = nullptr;  // U^T in panels over R: panel q is [G*H][16]
  const float* pt_packed = nullptr;  // P^T in panels over H: panel u is [P][16]
  float* dh_carry = nullptr;         // [B][R]: d_final_h in, d_initial_h out
  float* dc_carry = nullptr;         // [B][H]: d_final_c in, d_initial_c out
  float* dh_tot = nullptr;           // [B][R]: dh of the current step (output + carry)
  float* hprev_t = nullptr;          // [R][B*T]: h_{t-1} of each position, zero where invalid (after phase 1)
  float* m_t = nullptr;              // [H][B*T]: m = o * tanh(c) (projection only)
  float* dr = nullptr;               // [B*T][P]: gradient of r = m @ P after the clip mask (projection only)
  float* dhu = nullptr;              // [B*T][G*H]: gradient of h_{t-1} @ U + b (GRU)
  // When not null, dU [R][G*H] (and the GRU's recurrent-bias gradient [G*H]) are accumulated during the steps,
  // a rank-B update per step while its gradient rows are in cache (small U only; see the driver).
  float* d_u = nullptr;
  float* d_rec_bias = nullptr;
};

// out[m][k] = sum_n a_t[m][n] * rows(n)[k] for k in [k_begin, k_end), every m < M. Row n = b * T + t is
// rows + b * b_stride + t * t_stride. With bias_out, also bias_out[k] = sum_n rows(n)[k].
struct WeightGradArgs {
  float* out = nullptr;
  int64_t M = 0, K = 0, N = 0, T = 1;
  const float* a_t = nullptr;
  const float* rows = nullptr;
  int64_t b_stride = 0, t_stride = 0;
  float* bias_out = nullptr;
};

// Per-ISA step kernels: run step `step` for unit blocks [block_begin, block_end) over every active batch row.
struct StepKernels {
  const char* name;
  void (*lstm_gates)(const ChainCtx&, int64_t step, int64_t block_begin, int64_t block_end);
  void (*lstm_projection)(const ChainCtx&, int64_t step, int64_t block_begin, int64_t block_end);
  void (*gru_gates)(const ChainCtx&, int64_t step, int64_t block_begin, int64_t block_end);
  // Backward step stages (cpu_backward_impl.h): gates over unit blocks, carry over recurrent-column blocks (and
  // the next step's prep of those columns), and a step's prep over a column range.
  void (*bwd_gates)(const BwdCtx&, int64_t step, int64_t block_begin, int64_t block_end);
  void (*bwd_carry)(const BwdCtx&, int64_t step, int64_t block_begin, int64_t block_end);
  void (*bwd_prep)(const BwdCtx&, int64_t step, int64_t col_begin, int64_t col_end);
  void (*weight_grad)(const WeightGradArgs&, int64_t k_begin, int64_t k_end);
  int64_t weight_grad_stripe;  // columns per weight_grad tile stripe (split work on multiples of it)
  // out_t[c * ld + n] = rows[n][c] for n in [n0, n1), c in [c0, c1).
  void (*transpose_rows)(const float* const* rows, int64_t n0, int64_t n1, int64_t c0, int64_t c1, float* out_t,
                         int64_t ld);
  // sigmoid[i], tanh[i] of x[i], i < n: the step kernels' activations on their own, for the tests.
  void (*activations)(const float* x, int64_t n, float* sigmoid, float* tanh);
  // The kernels run INT8 weights as exact integer products (AVX-512 VNNI; ChainCtx::q8_vnni): the driver packs
  // int8 panels in the VNNI layout and sets up the fixed-point planes of the recurrent state.
  bool int8_vnni;
  // With int8_vnni: packs `cols` columns of an int8 matrix (row k of column col at src[k * ld + col_offset[col]];
  // a negative offset is a zero column) into the VNNI layout [ceil(K/4)][cols][4], zero past K, and
  // qsum128[col] = 128 * sum_k q[k][col].
  void (*pack_vnni_panel)(const int8_t* src, int64_t ld, const int64_t* col_offset, int64_t cols, int64_t K,
                          int8_t* dst, int32_t* qsum128);
};

// kAvx2Kernels and kAvx512Kernels exist only in x86-64 builds (FUSED_RNN_HAVE_X86_KERNELS).
extern const StepKernels kPortableKernels;
extern const StepKernels kAvx2Kernels;
extern const StepKernels kAvx512Kernels;
extern const StepKernels kAvx512VnniKernels;

// Runs stages [0, num_stages) of `num_chains` independent chains, each cut into `slices` slices, on the caller
// and up to threads - 1 helpers: stage k of a chain starts once every slice of its stage k - 1 is done; a thread
// keeps the slices it claimed. `setup` runs on the caller while helpers may already run stage 0; no later stage
// starts before it returns. The forward's scheduler (fused_rnn_cpu.cc), shared with the backward.
void RunStaged(int num_chains, int64_t slices, int64_t num_stages, int threads, ParallelRunner* runner,
               std::function<void(int chain, int64_t slice, int64_t stage)> stage_fn, const std::function<void()>& setup);

// The kernels of the widest ISA this CPU runs (or FUSED_RNN_ISA's choice).
const StepKernels& PickKernels();

// CpuBackward with a given kernel table.
void CpuBackwardWithKernels(const StepKernels& kernels, const RnnShape& shape, const RnnBackwardArgs& args,
                            float* scratch, ParallelRunner* runner);

// CpuForward with a given kernel table (tests run every ISA the machine has in one process).
void CpuForwardWithKernels(const StepKernels& kernels, const RnnShape& shape, const RnnForwardArgs& args,
                           float* scratch, ParallelRunner* runner);

}  // namespace cpu
}  // namespace fused_rnn

#endif  // FUSED_RNN_CORE_CPU_INTERNAL_H_
