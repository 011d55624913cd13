// Framework-free core of the fused recurrence: plain C++17, no TensorFlow headers.
//
// One call runs a whole sequence (every timestep, every direction) of an LSTM, a projection LSTM
// (TF's LSTMCell(num_proj=...) semantics, with cell/projection clips) or a GRU (Keras reset_after=True).
// The input projection x @ W_input + b_input for all timesteps is computed by the caller before the call
// (one big GEMM); the core owns only the sequential part.
//
// Conventions (D = directions, G = gates, H = units, P = projection, R = recurrent width = P ? P : H):
//   LSTM gate order (i, f, c, o) as Keras; GRU gate order (z, r, n) as Keras with reset_after=True.
//   x_proj:            [B, T, D*G*H] (batch-major) or [T, B, D*G*H] (time-major); forward direction first.
//   recurrent_kernel:  [D, R, G*H]   (Keras' recurrent_kernel layout per direction)
//   recurrent_bias:    [D, G*H] or null (GRU reset_after's recurrent bias; it sits inside r * (...))
//   projection_kernel: [D, H, P] or null when P == 0
//   sequence_lengths:  [B], 0 <= len <= T, or null meaning every sequence has length T.
//   initial_h:         [D, B, R]; initial_c: [D, B, H] (LSTM only)
//   output:            [B, T, D*R] or [T, B, D*R]; forward direction in [0, R), reverse in [R, 2R).
//                      Zero at positions t >= len. The reverse direction walks each sequence backwards within
//                      its own length (tf.reverse_sequence semantics) and writes its output at the original
//                      time position.
//   final_h:           [D, B, R]; final_c: [D, B, H] (LSTM). The state after the last valid step; a zero-length
//                      sequence returns its initial state.
//   reserve:           null at inference. When training, [D, B, T, F] floats (F = ReserveFeatures) holding what
//                      the backward pass needs, written only at valid positions:
//                        LSTM: i, f, g, o after activation (4H), c before the cell clip (H), and, with a
//                              projection, r = m @ P before the projection clip (P).
//                        GRU:  z, r, n after activation (3H), and h_prev @ U_n + b_rn (H).
#ifndef FUSED_RNN_CORE_FUSED_RNN_H_
#define FUSED_RNN_CORE_FUSED_RNN_H_

#include <cstddef>
#include <cstdint>
#include <functional>

namespace fused_rnn {

enum class CellType : int { kLstm = 0, kGru = 1 };
enum class Direction : int { kForward = 0, kReverse = 1, kBidirectional = 2 };
// 16-bit recurrent (and projection) weights, as raw bit patterns: IEEE binary16 or bfloat16.
enum class Weight16 : int { kNone = 0, kFloat16 = 1, kBFloat16 = 2 };

struct RnnShape {
  CellType cell = CellType::kLstm;
  Direction direction = Direction::kForward;
  int64_t max_time = 0;   // T
  int64_t batch = 0;      // B
  int64_t num_units = 0;  // H
  int64_t num_proj = 0;   // P; 0 = no projection (LSTM only)
  bool time_major = false;
  float cell_clip = 0.f;  // <= 0: no clip (LSTM only)
  float proj_clip = 0.f;  // <= 0: no clip (projection LSTM only)
  // INT8 recurrent (and projection) weights with one float scale per row: W[k][j] = q[k][j] / scale[k]; forward
  // only. Inputs, outputs, states and the cell arithmetic stay float32. The product h @ W: on CPUs with AVX-512
  // VNNI, an exact integer dot product of q with h / scale rounded to a 31-bit fixed point (its bound known before
  // each step: errors at float32's level, tested against float64); elsewhere, the weights converted to float32
  // on the fly.
  bool int8_weights = false;
  // 16-bit recurrent (and projection) weights (float16 or bfloat16 bits, same layouts): half the bytes a step
  // streams. The arithmetic stays float32 (each weight converted exactly on load); forward only. Not together with
  // int8_weights.
  Weight16 weight16 = Weight16::kNone;

  int num_dirs() const { return direction == Direction::kBidirectional ? 2 : 1; }
  int num_gates() const { return cell == CellType::kLstm ? 4 : 3; }
  int64_t recurrent_width() const { return num_proj > 0 ? num_proj : num_units; }  // R
};

struct RnnForwardArgs {
  const float* x_proj = nullptr;
  const float* recurrent_kernel = nullptr;
  const float* recurrent_bias = nullptr;
  const float* projection_kernel = nullptr;
  const int32_t* sequence_lengths = nullptr;
  const float* initial_h = nullptr;
  const float* initial_c = nullptr;
  float* output = nullptr;
  float* final_h = nullptr;
  float* final_c = nullptr;
  float* reserve = nullptr;
  // With shape.int8_weights, these replace recurrent_kernel / projection_kernel (same layouts, int8), with
  // scales [D, R] and [D, H]: row k of direction d is q[d][k][:] / scale[d][k]. A zero scale means a zero row.
  const int8_t* recurrent_kernel_q8 = nullptr;
  const float* recurrent_scale = nullptr;
  const int8_t* projection_kernel_q8 = nullptr;
  const float* projection_scale = nullptr;
  // With shape.weight16, these replace recurrent_kernel / projection_kernel (same layouts, 16-bit patterns).
  const uint16_t* recurrent_kernel_16 = nullptr;
  const uint16_t* projection_kernel_16 = nullptr;
};

// Returns nullptr when the shape is one the core runs, else a message naming what is wrong.
// (The TF layer validates every argument first; this is the core's own contract.)
const char* CheckShape(const RnnShape& shape);

// The first batch row whose length is outside [0, max_time], or -1 when every length is valid (the core's other
// contract on its inputs; the TF layer reports the row by name).
int64_t FirstBadLength(const int32_t* lengths, int64_t batch, int64_t max_time);

// Floats per (direction, batch row, timestep) of the training reserve.
int64_t ReserveFeatures(const RnnShape& shape);
// Total floats of the training reserve: D * B * T * ReserveFeatures.
int64_t ReserveFloats(const RnnShape& shape);

// ---- CPU ----------------------------------------------------------------------------------------------------
// A thread pool the core may use. The calling thread always takes part, so a pool that never runs the scheduled
// work only costs speed, never correctness or progress (no deadlock even when every pool thread is busy).
class ParallelRunner {
 public:
  virtual ~ParallelRunner() = default;
  // Threads that may run concurrently with the caller (0: run everything on the caller's thread).
  virtual int NumHelperThreads() const = 0;
  virtual void Schedule(std::function<void()> fn) = 0;
};

// Floats of caller-owned scratch (64-byte aligned) the CPU forward needs.
int64_t CpuForwardScratchFloats(const RnnShape& shape);

// Runs the forward recurrence on the CPU. `runner` may be null (single-threaded). The result is bitwise the same
// whatever the number of threads. Picks AVX-512, AVX2+FMA or a portable path at run time.
void CpuForward(const RnnShape& shape, const RnnForwardArgs& args, float* scratch, ParallelRunner* runner);

// ---- backward (training) ------------------------------------------------------------------------------------
// Backpropagation through time in one call, for a forward that ran with a reserve. Same shape and layouts as the
// forward; `d_*` are the gradients of the forward's outputs (d_output zero-past-length positions are ignored).
struct RnnBackwardArgs {
  const float* recurrent_kernel = nullptr;   // [D, R, G*H]
  const float* projection_kernel = nullptr;  // [D, H, P] or null
  const int32_t* sequence_lengths = nullptr; // [B] or null (all T)
  const float* initial_h = nullptr;          // [D, B, R]
  const float* initial_c = nullptr;          // [D, B, H] (LSTM)
  const float* output = nullptr;             // the forward's output
  const float* reserve = nullptr;            // the forward's reserve [D, B, T, F]
  const float* d_output = nullptr;           // like output
  const float* d_final_h = nullptr;          // [D, B, R]
  const float* d_final_c = nullptr;          // [D, B, H] (LSTM)
  float* d_x_proj = nullptr;                 // like x_proj; zero past each length
  float* d_recurrent_kernel = nullptr;       // [D, R, G*H]
  float* d_recurrent_bias = nullptr;         // [D, G*H] (GRU)
  float* d_projection_kernel = nullptr;      // [D, H, P] when P > 0
  float* d_initial_h = nullptr;              // [D, B, R]
  float* d_initial_c = nullptr;              // [D, B, H] (LSTM)
};

// Floats of caller-owned scratch (64-byte aligned) the CPU backward needs: the transposed weights, and per
// (direction, row, step) the previous state and, with a projection, m and d(r), kept for the weight gradients.
int64_t CpuBackwardScratchFloats(const RnnShape& shape);

// The sequential part (a thread per direction) walks the steps backwards keeping dh/dc in registers and
// cache; the weight gradients are then one product over all steps (dU = sum_t h_{t-1}^T da_t), split over
// threads. Deterministic whatever the number of threads.
void CpuBackward(const RnnShape& shape, const RnnBackwardArgs& args, float* scratch, ParallelRunner* runner);

// Which vector path CpuForward uses on this CPU: "avx512vnni", "avx512", "avx2" or "portable".
// FUSED_RNN_ISA=portable|avx2|avx512 in the environment forces a narrower path (for testing every path on one
// machine).
const char* CpuIsaName();

}  // namespace fused_rnn

#endif  // FUSED_RNN_CORE_FUSED_RNN_H_
