// Run by tools/check_serving_build.sh: what a TF Serving model server does with a SavedModel, in a C++ program that
// links @fused_rnn//cc:serving_ops (statically, as the recipe links it into tensorflow_model_server) and the pip
// TensorFlow's C++ runtime, with no Python: LoadSavedModel with the "serve" tag, the serving_default signature looked
// up in the MetaGraphDef, one Session::Run on a ragged batch of string tokens. Each output must match the values
// that the portable export (stock ops only) gave in Python (tools/serving_check/make_case.py).
//   serve_once CASE_DIR
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/public/session.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CASE_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  std::ifstream in(dir + "/case.txt");
  std::string export_dir, line;
  int64_t batch = 0, width = 0;
  std::getline(in, export_dir);
  std::getline(in, line);
  std::istringstream(line) >> batch >> width;
  tensorflow::Tensor tokens(tensorflow::DT_STRING, tensorflow::TensorShape({batch, width}));
  for (int64_t i = 0; i < batch * width; ++i) {
    std::getline(in, line);
    tokens.flat<tensorflow::tstring>()(i) = line;
  }
  tensorflow::Tensor lengths(tensorflow::DT_INT32, tensorflow::TensorShape({batch}));
  std::getline(in, line);
  std::istringstream lens(line);
  for (int64_t i = 0; i < batch; ++i) lens >> lengths.flat<int32_t>()(i);
  std::getline(in, line);
  std::vector<std::string> names;
  std::istringstream name_stream(line);
  for (std::string n; name_stream >> n;) names.push_back(n);
  if (!in || names.empty()) {
    std::fprintf(stderr, "serve_once: cannot read %s/case.txt\n", dir.c_str());
    return 2;
  }

  tensorflow::SavedModelBundle bundle;
  const absl::Status loaded = tensorflow::LoadSavedModel(tensorflow::SessionOptions(), tensorflow::RunOptions(),
                                                          export_dir, {"serve"}, &bundle);
  if (!loaded.ok()) {
    std::fprintf(stderr, "serve_once: LoadSavedModel(%s): %s\n", export_dir.c_str(), loaded.ToString().c_str());
    return 1;
  }
  const auto& signatures = bundle.meta_graph_def.signature_def();
  const auto it = signatures.find("serving_default");
  if (it == signatures.end()) {
    std::fprintf(stderr, "serve_once: no serving_default signature\n");
    return 1;
  }
  const tensorflow::SignatureDef& sig = it->second;
  std::vector<std::pair<std::string, tensorflow::Tensor>> feeds = {
      {sig.inputs().at("tokens").name(), tokens}, {sig.inputs().at("sequence_len").name(), lengths}};
  std::vector<std::string> fetches;
  for (const std::string& n : names) fetches.push_back(sig.outputs().at(n).name());
  std::vector<tensorflow::Tensor> outputs;
  const absl::Status ran = bundle.session->Run(feeds, fetches, {}, &outputs);
  if (!ran.ok()) {
    std::fprintf(stderr, "serve_once: Session::Run: %s\n", ran.ToString().c_str());
    return 1;
  }

  int failed = 0;
  for (size_t k = 0; k < names.size(); ++k) {
    const tensorflow::Tensor& got = outputs[k];
    std::ifstream f(dir + "/" + names[k] + ".f32", std::ios::binary);
    std::vector<float> want(got.NumElements());
    f.read(reinterpret_cast<char*>(want.data()), static_cast<std::streamsize>(want.size() * sizeof(float)));
    const bool size_ok = got.dtype() == tensorflow::DT_FLOAT && f.gcount() == static_cast<std::streamsize>(
        want.size() * sizeof(float)) && f.peek() == EOF;
    double max_diff = 0, max_want = 0;
    if (size_ok) {
      const auto g = got.flat<float>();
      for (size_t i = 0; i < want.size(); ++i) {
        const double d = std::fabs(static_cast<double>(g(i)) - want[i]);
        max_diff = std::isnan(d) ? INFINITY : std::max(max_diff, d);
        max_want = std::max(max_want, std::fabs(static_cast<double>(want[i])));
      }
    }
    const bool ok = size_ok && max_diff <= 1e-4 * std::max(1.0, max_want);
    std::printf("%s %s: shape %s, max |fused - portable| %.2e (max |value| %.2f)\n", ok ? "ok" : "FAILED",
                names[k].c_str(), got.shape().DebugString().c_str(), max_diff, max_want);
    failed += !ok;
  }
  return failed ? 1 : 0;
}
