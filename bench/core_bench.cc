// Times the framework-free CPU core alone (no TensorFlow): how much of a layer's time is the recurrence.
// Build: bazel build -c opt //bench:core_bench; run: bazel-bin/bench/core_bench
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cstring>
#include <time.h>

#include "cc/core/fused_rnn.h"

namespace {

int64_t kMaxTime = 100;  // --time T: timesteps (T=1 shows a call's fixed costs, e.g. packing)
bool kCpuTime = false;  // --cpu-time: single-thread column in thread CPU time
// --cold: evict the caches before every timed call (inside TensorFlow the other ops of a step stream tens of MB
// between two calls of the op, so its inputs and outputs no longer sit in the 32 MB L3).
bool kCold = false;
// --reserve: the float32 forward also writes the training reserve (what a forward inside a training step does).
bool kReserve = false;
std::vector<float>& EvictBuffer() {
  static std::vector<float> buf(32 << 20);  // 128 MB
  return buf;
}
void EvictCaches() {
  std::vector<float>& buf = EvictBuffer();
  for (size_t i = 0; i < buf.size(); i += 16) buf[i] += 1.f;
}

// Helper threads that stay alive between calls, as a real pool's do.
class SpinPool : public fused_rnn::ParallelRunner {
 public:
  explicit SpinPool(int n) : n_(n) {}
  int NumHelperThreads() const override { return n_; }
  void Schedule(std::function<void()> fn) override { threads_.emplace_back(std::move(fn)); }
  void Join() {
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

 private:
  int n_;
  std::vector<std::thread> threads_;
};

enum class Mode { kForward, kInt8Forward, kBackward, kF16Forward, kBf16Forward };

double TimeMs(fused_rnn::CellType cell, bool bidi, int64_t H, int64_t B, int helpers, Mode mode) {
  fused_rnn::RnnShape s;
  s.cell = cell;
  s.direction = bidi ? fused_rnn::Direction::kBidirectional : fused_rnn::Direction::kForward;
  s.max_time = kMaxTime;
  s.batch = B;
  s.num_units = H;
  const int64_t D = s.num_dirs(), G = s.num_gates();
  std::mt19937 rng(1);
  std::normal_distribution<float> n01(0.f, 0.1f);
  auto rand = [&](int64_t n) { std::vector<float> v(n); for (auto& e : v) e = n01(rng); return v; };
  auto x = rand(B * kMaxTime * D * G * H), rk = rand(D * H * G * H), h0 = rand(D * B * H), c0 = rand(D * B * H);
  std::vector<float> out(B * kMaxTime * D * H), fh(D * B * H), fc(D * B * H), reserve(fused_rnn::ReserveFloats(s));
  // INT8 weights: any int8 values and scales time the same as real ones.
  std::vector<int8_t> rk_q8(rk.size());
  for (size_t i = 0; i < rk.size(); ++i) rk_q8[i] = static_cast<int8_t>(static_cast<int>(rk[i] * 1000) % 127);
  std::vector<float> rk_scale(D * H, 100.f);
  // 16-bit weights: the float weights rounded (float16 by the compiler's _Float16, bfloat16 truncated).
  std::vector<uint16_t> rk16(rk.size());
  for (size_t i = 0; i < rk.size(); ++i) {
    if (mode == Mode::kF16Forward) {
      const _Float16 h = static_cast<_Float16>(rk[i]);
      std::memcpy(&rk16[i], &h, 2);
    } else {
      uint32_t u;
      std::memcpy(&u, &rk[i], 4);
      rk16[i] = static_cast<uint16_t>(u >> 16);
    }
  }
  fused_rnn::RnnForwardArgs a;
  a.x_proj = x.data();
  a.recurrent_kernel = rk.data();
  a.initial_h = h0.data();
  a.initial_c = c0.data();
  a.output = out.data();
  a.final_h = fh.data();
  a.final_c = fc.data();
  if (mode == Mode::kInt8Forward) {
    s.int8_weights = true;
    a.recurrent_kernel = nullptr;
    a.recurrent_kernel_q8 = rk_q8.data();
    a.recurrent_scale = rk_scale.data();
  }
  if (mode == Mode::kF16Forward || mode == Mode::kBf16Forward) {
    s.weight16 = mode == Mode::kF16Forward ? fused_rnn::Weight16::kFloat16 : fused_rnn::Weight16::kBFloat16;
    a.recurrent_kernel = nullptr;
    a.recurrent_kernel_16 = rk16.data();
  }
  std::vector<float> scratch(std::max(fused_rnn::CpuForwardScratchFloats(s), fused_rnn::CpuBackwardScratchFloats(s)) + 16);
  float* aligned = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) & ~uintptr_t{63});
  std::vector<float> dx(x.size()), drk(rk.size()), dh0(h0.size()), dc0(c0.size()), drb(D * G * H);
  fused_rnn::RnnBackwardArgs g;
  if (kReserve && mode == Mode::kForward) a.reserve = reserve.data();
  if (mode == Mode::kBackward) {
    a.reserve = reserve.data();
    fused_rnn::CpuForward(s, a, aligned, nullptr);
    g.recurrent_kernel = rk.data();
    g.initial_h = h0.data();
    g.initial_c = c0.data();
    g.output = out.data();
    g.reserve = reserve.data();
    g.d_output = out.data();  // any values time the same
    g.d_final_h = fh.data();
    g.d_final_c = fc.data();
    g.d_x_proj = dx.data();
    g.d_recurrent_kernel = drk.data();
    g.d_recurrent_bias = drb.data();
    g.d_initial_h = dh0.data();
    g.d_initial_c = dc0.data();
  }
  std::vector<double> times;
  for (int i = 0; i < 23; ++i) {
    SpinPool pool(helpers);
    if (kCold) EvictCaches();
    timespec t_cpu0, t_cpu1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t_cpu0);
    const auto t0 = std::chrono::steady_clock::now();
    if (mode == Mode::kBackward) fused_rnn::CpuBackward(s, g, aligned, &pool);
    else fused_rnn::CpuForward(s, a, aligned, &pool);
    const auto t1 = std::chrono::steady_clock::now();
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t_cpu1);
    pool.Join();
    // With no helpers, the calling thread's CPU time is barely touched by other processes' load.
    const double cpu_ms = (t_cpu1.tv_sec - t_cpu0.tv_sec) * 1e3 + (t_cpu1.tv_nsec - t_cpu0.tv_nsec) * 1e-6;
    if (i >= 3) times.push_back(helpers == 0 && kCpuTime ? cpu_ms : std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string only;  // --only SUBSTRING: just the cases whose name contains it
  bool weights16 = false;  // --weights16: columns float32 / float16 / bfloat16 forward instead
  int64_t units = 0;       // --units H: run the chosen cases with H units instead (e.g. to see padding costs)
  for (int i = 1; i < argc; ++i) {
    weights16 |= std::string(argv[i]) == "--weights16";
    kCpuTime |= std::string(argv[i]) == "--cpu-time";
    kCold |= std::string(argv[i]) == "--cold";
    kReserve |= std::string(argv[i]) == "--reserve";
    if (std::string(argv[i]) == "--only" && i + 1 < argc) only = argv[++i];
    if (std::string(argv[i]) == "--units" && i + 1 < argc) units = std::stoll(argv[++i]);
    if (std::string(argv[i]) == "--time" && i + 1 < argc) kMaxTime = std::stoll(argv[++i]);
  }
  std::printf("core only (no TF), T=%lld, ISA %s, median ms%s\n", static_cast<long long>(kMaxTime), fused_rnn::CpuIsaName(),
              kCold ? ", caches evicted before every call" : "");
  std::printf("%-20s | %-21s | %-21s | %-21s\n", "", "forward float32", weights16 ? "forward float16" : "forward int8",
              weights16 ? "forward bfloat16" : "backward");
  std::printf("%-20s | %10s %10s | %10s %10s | %10s %10s\n", "case", "1 thread", "2 threads", "1 thread",
              "2 threads", "1 thread", "2 threads");
  struct C { const char* name; fused_rnn::CellType cell; bool bidi; int64_t H, B; };
  for (const C& c : {C{"LSTM H=100 B=1", fused_rnn::CellType::kLstm, false, 100, 1},
                     C{"LSTM H=256 B=1", fused_rnn::CellType::kLstm, false, 256, 1},
                     C{"LSTM H=512 B=1", fused_rnn::CellType::kLstm, false, 512, 1},
                     C{"LSTM H=1024 B=1", fused_rnn::CellType::kLstm, false, 1024, 1},
                     C{"LSTM H=512 B=16", fused_rnn::CellType::kLstm, false, 512, 16},
                     C{"LSTM H=512 B=32", fused_rnn::CellType::kLstm, false, 512, 32},
                     C{"biLSTM H=100 B=1", fused_rnn::CellType::kLstm, true, 100, 1},
                     C{"LSTM H=100 B=32", fused_rnn::CellType::kLstm, false, 100, 32},
                     C{"biLSTM H=100 B=32", fused_rnn::CellType::kLstm, true, 100, 32},
                     C{"GRU H=256 B=32", fused_rnn::CellType::kGru, false, 256, 32},
                     C{"GRU H=256 B=1", fused_rnn::CellType::kGru, false, 256, 1}}) {
    if (!only.empty() && std::string(c.name).find(only) == std::string::npos) continue;
    const int64_t H = units > 0 ? units : c.H;
    std::printf("%-20s", units > 0 ? (std::string(c.name) + " (H=" + std::to_string(H) + ")").c_str() : c.name);
    const std::vector<Mode> modes = weights16 ? std::vector<Mode>{Mode::kForward, Mode::kF16Forward, Mode::kBf16Forward}
                                              : std::vector<Mode>{Mode::kForward, Mode::kInt8Forward, Mode::kBackward};
    for (Mode m : modes) {
      std::printf(" | %10.3f %10.3f", TimeMs(c.cell, c.bidi, H, c.B, 0, m), TimeMs(c.cell, c.bidi, H, c.B, 1, m));
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  return 0;
}
