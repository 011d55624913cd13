// absl::Status helpers for the op layer (TF 2.21 deprecates tensorflow::Status and errors::InvalidArgument).
#ifndef FUSED_RNN_TF_STATUS_H_
#define FUSED_RNN_TF_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fused_rnn {

template <typename... Parts>
absl::Status Invalid(const Parts&... parts) {
  return absl::InvalidArgumentError(absl::StrCat(parts...));
}

}  // namespace fused_rnn

#endif  // FUSED_RNN_TF_STATUS_H_
