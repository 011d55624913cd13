// absl::Status helpers for the op layer (TF 2.21 deprecates tensorflow::Status and errors::InvalidArgument).
#ifndef FUSED_RNN_TF_STATUS_H_
#define FUSED_RNN_TF_STATUS_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fused_rnn {

template <typename... Parts>
absl::Status Invalid(const Parts&... parts) {
  return absl::InvalidArgumentError(absl::StrCat(parts...));
}

// Judged on the bits: TensorFlow's threads flush subnormals to zero, where a comparison would see a subnormal clip
// as 0 ("no clip") and a negative subnormal as >= 0. Shared by the shape functions and the kernels' checks.
inline bool IsSubnormal(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return (bits & 0x7f800000u) == 0 && (bits & 0x007fffffu) != 0;
}

// v for an error message. A subnormal is worked out from its bits in double (where it is a normal number): printed
// as a float on a thread that flushes subnormals, it reads "0" and the message contradicts itself.
inline std::string FloatForMessage(float v) {
  if (!IsSubnormal(v)) return absl::StrCat(v);
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const double magnitude = std::ldexp(static_cast<double>(bits & 0x007fffffu), -149);
  return absl::StrCat((bits >> 31) ? "-" : "", magnitude, " (subnormal)");
}

}  // namespace fused_rnn

#endif  // FUSED_RNN_TF_STATUS_H_
