// Kernel parameters shared by the planner (host) and the persistent kernel (device). Plain C++, no CUDA types.
#ifndef FUSED_RNN_CUDA_FUSED_RNN_CUDA_PARAMS_H_
#define FUSED_RNN_CUDA_FUSED_RNN_CUDA_PARAMS_H_

#include <cstdint>

namespace fused_rnn {
namespace cuda_impl {

enum : int { kExchangeLocal = 0, kExchangeTagged = 1, kExchangeCounter = 2, kExchangeCluster = 3 };
// Mode 4 is a different kernel (fused_rnn_cuda_tc.cuh): 16-bit weights as tensor-core (mma.sync) fragments, h
// exchanged as 16-bit values through the workspace, counter barrier. Only the fields it names below apply to it.
enum : int { kModeTensorCore = 4 };
// Mode 5 is the small-hidden-size kernel (fused_rnn_cuda_small.cuh): one block per (direction, batch row), the
// whole recurrent kernel in registers (NI chunks per lane, map a with one warp slot), one __syncthreads per step.
// Fields it uses: shape, tensors, a, off_h (the [2][a.kpad] h tile), off_stage / stage_bytes; its cluster variant
// (sm_90) also nbu (blocks per cluster), upb (units per block) and off_mbar (two 8-byte transaction barriers).
enum : int { kModeSmall = 5 };
// Mode 6 is the int8 tensor-core kernel (fused_rnn_cuda_i8mma.cuh): LSTM with int8 weights at batch <= 2, the
// recurrent (and projection) products as exact integer mma.sync m16n8k32 (s8 weights x u8 byte planes of h in a
// 31-bit fixed point), tagged exchange, phase B as a reduce-scatter. Fields: shape, tensors, nbu, upb, ppb, rb,
// off_h / off_c / off_hown / off_len / off_x / off_stage, ex_r / ex_p, union_bytes, and q8 below.
enum : int { kModeInt8Mma = 6 };
// Register tiles (16 gate columns x 32 k of U) per warp compiled for mode 6 (index 0..kI8MmaNumTa-1).
constexpr int kI8MmaNumTa = 5;
constexpr int kI8MmaTa[kI8MmaNumTa] = {2, 4, 8, 16, 32};
constexpr int kSmallMaxNi = 8;
constexpr int kSmallMaxTail = 2;  // chunks past the NR register ones, in shared memory
// The small kernel's wide cluster variant (float32, 8 lanes per unit): these register chunk counts, and up to
// kSmallWideTail chunks in shared memory.
constexpr int kSmallWideCount = 3;
constexpr int kSmallWideNr[kSmallWideCount] = {8, 10, 12};
constexpr int kSmallWideTail = 8;
// kWeightI8: int8 rows with one float scale per row (W[k][j] = q[k][j] / scale[k]); the kernel multiplies h[k] by
// 1 / scale[k] instead of dequantizing every weight, as the CPU path does.
enum : int { kWeightF32 = 0, kWeightF16 = 1, kWeightBF16 = 2, kWeightI8 = 3 };

// How one block's threads share one product z[rows, cols] = h[rows, K] @ W[K, cols] (per gate):
// warp w, lane l -> column group (w / ksw), k-slot kw = w % ksw; inside the warp, ksl consecutive lanes share a
// column (lane / ksl picks it among 32 / ksl columns). k is split into "chunks" of 4 * ks rows; in chunk j the
// thread with k-lane kl = kw * ksl + l % ksl owns rows 4 * (kl + ks * j) + e, e < 4 (so one float4 of h).
struct DotMap {
  int cols = 0;          // columns per gate owned by the block (units, or projection columns)
  int ksl = 1;           // lanes per column (power of 2, <= 32): reduced with shuffles
  int ksw = 1;           // warps per column group: partial sums added in shared memory
  int ks = 1;            // ksl * ksw
  int kc = 0;            // chunks: ceil(K / (4 * ks))
  int kpad = 0;          // kc * 4 * ks, the row stride of the h tile in shared memory (floats)
  int kc_reg = 0;        // leading chunks held in registers (<= the kernel's KC_REG)
  int stream_global = 0; // 1: the other chunks stream from the workspace, 0: from shared memory
  int threads_used = 0;  // (column groups) * ksw * 32
};

struct KernelParams {
  // shape
  int D = 1, B = 0, T = 0, H = 0, P = 0, R = 0;
  int reverse_mask = 0;  // bit d set: direction d walks each sequence backwards
  int time_major = 0;
  float cell_clip = 0.f, proj_clip = 0.f;
  int reserve_f = 0;     // floats per (d, b, t) of the reserve
  // tensors (device)
  const float* x_proj = nullptr;
  const void* w_rec = nullptr;   // [D, R, G*H] in the weight type
  const float* rec_bias = nullptr;
  const void* w_proj = nullptr;  // [D, H, P]
  const float* rec_scale = nullptr;   // kWeightI8: [D, R] row scales of w_rec
  const float* proj_scale = nullptr;  // kWeightI8: [D, H] row scales of w_proj
  const int32_t* lengths = nullptr;
  const float* h0 = nullptr;
  const float* c0 = nullptr;
  float* out = nullptr;
  float* final_h = nullptr;
  float* final_c = nullptr;
  float* reserve = nullptr;
  // decomposition: grid = D * nbr * nbu blocks; block (d, row group, unit block)
  int exchange = kExchangeLocal;
  int nbr = 1, rb = 0;   // row groups per direction, rows per group
  int nbu = 1;           // unit blocks per (direction, row group)
  int upb = 0, ppb = 0;  // units / projection columns per block
  int stage_rows = 0;    // multi-block: rows of h (and m) staged in shared memory at once
  DotMap a, b;           // phase A: h_prev @ U (G gates), phase B: m @ P_kernel (projection)
  // Phase B as a reduce-scatter (tagged exchange, even P): map b is then m_own[rows, upb] @ P[u0.., :] with the P
  // columns as two "gates" of P / 2 (b.cols = P / 2); every block publishes its [rows, P] partial sums (xm_tag:
  // [2][D][B][nbu][ex_p] tagged words) and the owner of a column adds the nbu partials in a fixed order. Each block
  // then reads nbu * ppb words per row and step instead of all H values of m.
  int proj_rs = 0;
  int ex_p = 0;
  // Mode 6 only: the block's phase A is ma = upb / 4 m-tiles (16 gate columns: 4 units x 4 gates) x ka k-tiles
  // (32 rows of U) split over ks k-slices of ta tiles (warp w: m-tile w % ma, slice w / ma); phase B is mb
  // m-tiles (16 projection columns) x kb k-tiles (32 own units), fragments in shared memory. Shared-memory offsets
  // (bytes) of the byte planes (pla_stride / plb_stride bytes per plane), the phase-A accumulators, the column
  // sums, the 1 / scale rows, the NaN flags and the phase-B fragments; stage_rows_a: k-rows per prologue pass.
  struct I8Mma {
    int ma = 0, ka = 0, ks = 1, ta = 0, mb = 0, kb = 0;
    int pla_stride = 0, plb_stride = 0;
    int off_pla = 0, off_plb = 0, off_acc = 0, off_csa = 0, off_csb = 0, off_inva = 0, off_invb = 0, off_flags = 0,
        off_fragb = 0, stage_rows_a = 0;
  } q8;          // row stride of the partial-sum rows (P)
  // shared-memory layout (bytes from the dynamic base)
  int off_h = 0, off_m = 0, off_z = 0, off_c = 0, off_hown = 0, off_len = 0, off_x = 0, off_stream_a = 0,
      off_stream_b = 0;
  int off_mbar = 0;      // mode 5 cluster variant: the two h buffers' transaction barriers (8-byte aligned)
  int off_scale_a = 0, off_scale_b = 0;  // kWeightI8: [a.kpad], [b.kpad] floats of 1 / scale (0 past K)
  int h_buf_floats = 0;  // local mode: floats between the two h buffers
  int ex_r = 0, ex_h = 0; // row strides of the h and m exchange buffers (R and H rounded up to 4: 16-byte rows)
  int union_bytes = 0;   // bytes of the h/m tiles + z partial sums (zeroed in the prologue)
  // Prologue only: a shared-memory area the block loads its weight slices through, coalesced (0 bytes: each thread
  // loads its own elements straight from global memory). Rows laid out as StageSlot / StageRowBytes say.
  int off_stage = 0, stage_bytes = 0;
  // workspace (device)
  int* watchdog = nullptr;
  unsigned* counters = nullptr;              // [D * nbr] barrier counters, 128 bytes apart
  unsigned long long* xh_tag = nullptr;      // [2][D][B][ex_r]  (value bits | (tag << 32))
  unsigned long long* xm_tag = nullptr;      // [2][D][B][ex_h]; proj_rs: [2][D][B][nbu][ex_p] partial sums
  float* xh = nullptr;                       // [2][D][B][ex_r]
  float* xm = nullptr;                       // [2][D][B][ex_h]
  void* xh16 = nullptr;                      // tensor-core mode: [2][D][tc_mt][tc_kt] 512-byte tiles of h, fragment order
  int tc_mt = 0, tc_kt = 0;                  // tensor-core mode: 16-row batch tiles, k tiles of U (16 rows; 8 for f32)
  int tc_tf32 = 0;                           // tensor-core mode, float32 weights: one TF32 product (CudaTuning::allow_tf32)
  // Tensor-core mode, TF32 products through float16 (CudaTuning::tf32_exchange16): the float16 kernel runs on a
  // copy of U with every column scaled by a power of two, and multiplies each column's sums by the inverse.
  const float* tc_col_scale = nullptr;       // [D][G*H] 2^-e of each column, or null (no scaling)
  int off_cs = 0;                            // shared memory: [NT * 8] column scales of this block
  int off_frag = 0;                          // tensor-core mode, shared memory: [rb + upb] exchange-offset parts
  // Tensor-core mode: a device word written before the launch (by the float16-copy prologue kernel) that says which
  // of two launched kernels does the work: the kernel returns at once unless (*tc_gate != 0) == tc_gate_run_if.
  const int* tc_gate = nullptr;
  int tc_gate_run_if = 0;
  // Tensor-core mode, TF32 through float16, LSTM: [D * B] device words written by the copy kernel, a shift s
  // (0..114) per batch row: the row's h0 enters the float16 exchange as h0 * 2^-s and its step-0 sums are multiplied
  // by 2^s (fused_rnn_cuda_tc_f16copy.cu). Null: no shift.
  const int* tc_h0_shift = nullptr;
  void* ws_stream_a = nullptr;               // per block: ws_stream_a_words uint2 words
  void* ws_stream_b = nullptr;
  long long ws_stream_a_words = 0, ws_stream_b_words = 0;
  // Test-only phase timestamps (clock64 of block 0, thread 0), null in normal use: [0] entry, [1] weights loaded,
  // [2] prologue done, then per step s < kDebugSteps five stamps from 3 + 5 s: step start, h fetched, phase A dot
  // done, cell update done, step end; [3 + 5 kDebugSteps] after the loop, [+1], [+2] globaltimer at entry / exit.
  long long* debug_clock = nullptr;
};
constexpr int kDebugSteps = 32;
constexpr int kDebugSlots = 3 + 5 * kDebugSteps + 3;

using KernelFn = void (*)(KernelParams);

#if defined(__CUDACC__)
#define FUSED_RNN_HD __host__ __device__
#else
#define FUSED_RNN_HD
#endif
// The prologue's staging area holds, per k-row, G segments of StageSegWords 32-bit words, each an aligned window of
// the row's cols raw elements of elem_bytes (a 16-bit or int8 segment may start inside a word: the window begins at
// the word holding its first element, so it takes up to 3 more bytes). Copies are whole aligned words (cp.async).
FUSED_RNN_HD inline int StageSegWords(int elem_bytes, int cols) {
  const int per_word = 4 / elem_bytes;
  return (cols + 2 * (per_word - 1)) / per_word;
}
// Bytes per k-row: g segments, rounded up to an odd number of words so that the lanes of a warp, which read
// consecutive rows (StageSlot), hit different banks.
FUSED_RNN_HD inline int StageRowBytes(int elem_bytes, int g, int cols) {
  int words = g * StageSegWords(elem_bytes, cols);
  if (words % 2 == 0) ++words;
  return 4 * words;
}
// Slot of k-row kr (relative to the pass's first row) in a staging pass of `quarter` = ks * chunks rows per residue
// class: a thread's rows 4 * kl + e sit at e * quarter + kl, so consecutive k-lanes read consecutive slots.
FUSED_RNN_HD inline int StageSlot(int kr, int quarter) { return (kr & 3) * quarter + (kr >> 2); }

// Register-chunk variants compiled per weight type (index 0..kNumKcReg-1).
constexpr int kNumKcReg = 5;
inline int KcRegValue(int weight_kind, int idx) {
  static const int kF32[kNumKcReg] = {0, 2, 4, 6, 8};
  static const int k16[kNumKcReg] = {0, 4, 8, 12, 16};
  static const int k8[kNumKcReg] = {0, 8, 16, 24, 32};  // a chunk is G words: 4 int8 k-rows per word
  return weight_kind == kWeightF32 ? kF32[idx] : (weight_kind == kWeightI8 ? k8[idx] : k16[idx]);
}

// Defined in the instantiation files: the kernel for (cell, weight kind, rows per pass RC in {1, 4}, kc index, phase B
// as a reduce-scatter); null where that combination is not compiled.
KernelFn GetKernelLstmF32(int rc, int kc_idx, int proj_rs);
KernelFn GetKernelLstmF16(int rc, int kc_idx, int proj_rs);
KernelFn GetKernelLstmBF16(int rc, int kc_idx, int proj_rs);
KernelFn GetKernelGruF32(int rc, int kc_idx, int proj_rs);
KernelFn GetKernelGruF16(int rc, int kc_idx, int proj_rs);
KernelFn GetKernelGruBF16(int rc, int kc_idx, int proj_rs);
KernelFn GetKernelLstmI8(int rc, int kc_idx, int proj_rs);
KernelFn GetKernelGruI8(int rc, int kc_idx, int proj_rs);
// The (NT, KTW, MG) variants compiled per (cell, weight type): NT in {2, 3, 4, 6, 8}. 16-bit: KTW = 8 k-tiles of 16
// rows per warp, MG = 4 m-tiles per pass up to NT = 4, 2 above (register budget). float32 (3xTF32): KTW = 16 k-tiles
// of 8 rows, NT <= 4 only, MG = 2.
constexpr int kTcNumNt = 5;
inline int TcNtValue(int idx) {
  static const int kNt[kTcNumNt] = {2, 3, 4, 6, 8};
  return kNt[idx];
}
inline int TcKtw(int wk) { return wk == kWeightF32 ? 16 : 8; }
inline int TcKWidth(int wk) { return wk == kWeightF32 ? 8 : 16; }  // rows of U (k) per k-tile
inline int TcMgValue(int wk, int nt) { return wk == kWeightF32 ? 2 : (nt <= 4 ? 4 : 2); }
// Tensor-core kernels (mode 4) for (cell, weight kind), by n-tile index (fused_rnn_cuda_tc.cuh); null where that
// NT is not compiled.
KernelFn GetKernelTcLstmF16(int nt_idx);
KernelFn GetKernelTcLstmBF16(int nt_idx);
KernelFn GetKernelTcGruF16(int nt_idx);
KernelFn GetKernelTcGruBF16(int nt_idx);
KernelFn GetKernelTcLstmF16Scaled(int nt_idx);  // TF32 through float16: U's columns scaled (tc_col_scale)
KernelFn GetKernelTcGruF16Scaled(int nt_idx);
KernelFn GetKernelTcLstmF32(int nt_idx);
KernelFn GetKernelTcGruF32(int nt_idx);
// TF32 through float16 (fused_rnn_cuda_tc_f16copy.cu): w [D][K][GH] float32 -> w16 (each column times 2^e, float16
// bits) and col_scale [D][GH] (2^-e). gate [1 + h0_count / h0_width] words, zeroed by the caller: gate[0] set when a
// finite |h0| exceeds 65504, gate[1 + row] that row's shift (KernelParams::tc_h0_shift). stream is a cudaStream_t.
// Returns the launch's cudaError_t as an int (this header has no CUDA types).
int LaunchTcF16Copy(const float* w, int D, int K, int GH, uint16_t* w16, float* col_scale, const float* h0,
                    long long h0_count, int h0_width, int* gate, void* stream);
// INT8 weights run as float32 (fused_rnn_cuda_to_f32.cu, CudaTuning::as_float32): out = q * (1 / scale[row])
// (0 for a zero scale) for the recurrent kernel [rows_rec][cols_rec] and, if q_proj is not null, the projection
// kernel; also sets *zero_word to 0 (the workspace's watchdog word). Returns the launch's cudaError_t as an int.
int LaunchI8Dequant(const int8_t* q_rec, const float* s_rec, long long rows_rec, int cols_rec, float* out_rec,
                    const int8_t* q_proj, const float* s_proj, long long rows_proj, int cols_proj, float* out_proj,
                    int* zero_word, int sm_count, void* stream);
// 16-bit weights run as float32 (the same file): n_rec (and n_proj, if w_proj is not null) float16 or bfloat16 words
// widened to float32; also sets *zero_word to 0. Returns the launch's cudaError_t as an int.
int LaunchWiden16(bool bf16, const uint16_t* w_rec, long long n_rec, float* out_rec, const uint16_t* w_proj,
                  long long n_proj, float* out_proj, int* zero_word, int sm_count, void* stream);
// Small-hidden-size kernels (mode 5) for (cell, weight kind) by register chunks per lane (1..kSmallMaxNi) and
// lanes per unit (4 or 8); cluster != 0: the variant whose units split over a thread-block cluster.
KernelFn GetKernelSmallLstm(int wk, int nr, int ksl, int cluster);
KernelFn GetKernelSmallGru(int wk, int nr, int ksl, int cluster);
// Mode 6 (int8 LSTM, fused_rnn_cuda_i8mma.cuh) by register tiles index (kI8MmaTa); null before sm_80 builds.
KernelFn GetKernelI8MmaLstm(int ta_idx);
// The wide cluster variant (float32 weights only; nr one of kSmallWideNr, else nullptr).
KernelFn GetKernelSmallWideLstm(int wk, int nr);
KernelFn GetKernelSmallWideGru(int wk, int nr);

}  // namespace cuda_impl
}  // namespace fused_rnn

#endif  // FUSED_RNN_CUDA_FUSED_RNN_CUDA_PARAMS_H_
