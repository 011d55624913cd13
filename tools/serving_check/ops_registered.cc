// Run by tools/check_serving_build.sh inside a scratch workspace laid out like TF Serving's: reports, for each op
// named on the command line, whether TensorFlow's registries hold it and a CPU kernel for it, as they would in a
// tensorflow_model_server that links @fused_rnn//cc:serving_ops.
//   ops_registered present|absent OP...
// "present": every op must be registered with a CPU kernel; "absent" (the same program built without the
// library, the check's negative control): none may be.
#include <cstdio>
#include <cstring>
#include <string>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"

int main(int argc, char** argv) {
  if (argc < 3 || (std::strcmp(argv[1], "present") != 0 && std::strcmp(argv[1], "absent") != 0)) {
    std::fprintf(stderr, "usage: %s present|absent OP...\n", argv[0]);
    return 2;
  }
  const bool want = std::strcmp(argv[1], "present") == 0;
  int wrong = 0;
  for (int i = 2; i < argc; ++i) {
    const tensorflow::OpRegistrationData* data = nullptr;
    const bool op = tensorflow::OpRegistry::Global()->LookUp(argv[i], &data).ok();
    const std::string kernels = tensorflow::KernelsRegisteredForOp(argv[i]);
    const bool cpu_kernel = kernels.find("device='CPU'") != std::string::npos;
    std::printf("%-24s op %-10s CPU kernel %s\n", argv[i], op ? "registered" : "missing", cpu_kernel ? "yes" : "no");
    if (want ? !(op && cpu_kernel) : (op || cpu_kernel)) ++wrong;
  }
  std::printf("%s: %d of %d ops %s\n", wrong ? "FAILED" : "ok", argc - 2 - wrong, argc - 2,
              want ? "registered with a CPU kernel" : "absent, as expected without the library");
  return wrong ? 1 : 0;
}
