// Run by tools/check_serving_build.sh: what a TF Serving model server does with a SavedModel, in a C++ program that
// links @fused_rnn//cc:serving_ops (statically, as the recipe links it into tensorflow_model_server) and the pip
// TensorFlow's C++ runtime, with no Python: LoadSavedModel with the "serve" tag, a signature looked up in the
// MetaGraphDef, one Session::Run. Each output must match what the portable export (stock ops only) gave in Python
// (tools/serving_check/make_case.py writes the case).
//   serve_once CASE_FILE [OP_LIBRARY...]
// OP_LIBRARY: other ops the model needs (tensorflow-text's SentencePiece kernels for the NMT export), loaded with
// dlopen; TF Serving links those statically too (SUPPORTED_TENSORFLOW_OPS).
//
// CASE_FILE, line by line: the export directory; the signature; the number of inputs, then per input a line
// "name dtype rank dims..." (dtype string or int32) and its values, one per line; the number of outputs, then per
// output a line "name dtype file" (float32: raw little-endian floats; string: one value per line).
#include <dlfcn.h>

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

namespace {

bool ReadInput(std::ifstream& in, std::string* name, tensorflow::Tensor* value) {
  std::string line, dtype;
  int rank = 0;
  if (!std::getline(in, line)) return false;
  std::istringstream head(line);
  head >> *name >> dtype >> rank;
  tensorflow::TensorShape shape;
  for (int i = 0; i < rank; ++i) {
    int64_t d = 0;
    head >> d;
    shape.AddDim(d);
  }
  if (!head || (dtype != "string" && dtype != "int32")) return false;
  *value = tensorflow::Tensor(dtype == "string" ? tensorflow::DT_STRING : tensorflow::DT_INT32, shape);
  for (int64_t i = 0; i < shape.num_elements(); ++i) {
    if (!std::getline(in, line)) return false;
    if (dtype == "string") value->flat<tensorflow::tstring>()(i) = line;
    else value->flat<int32_t>()(i) = std::stoi(line);
  }
  return true;
}

// 0 when `got` matches the expected file (float32 within 1e-5 of the largest value, strings exactly).
int Compare(const std::string& name, const std::string& dtype, const std::string& path, const tensorflow::Tensor& got) {
  std::ifstream f(path, std::ios::binary);
  bool ok = static_cast<bool>(f);
  std::string detail;
  if (ok && dtype == "float32") {
    std::vector<float> want(got.NumElements());
    f.read(reinterpret_cast<char*>(want.data()), static_cast<std::streamsize>(want.size() * sizeof(float)));
    ok = got.dtype() == tensorflow::DT_FLOAT && f.gcount() == static_cast<std::streamsize>(want.size() * 4) &&
         f.peek() == EOF;
    double max_diff = 0, max_want = 0;
    for (size_t i = 0; ok && i < want.size(); ++i) {
      const double d = std::fabs(static_cast<double>(got.flat<float>()(i)) - want[i]);
      max_diff = std::isnan(d) ? INFINITY : std::max(max_diff, d);
      max_want = std::max(max_want, std::fabs(static_cast<double>(want[i])));
    }
    ok = ok && max_diff <= 1e-5 * std::max(1.0, max_want);
    char buf[128];
    std::snprintf(buf, sizeof(buf), "max |fused - portable| %.2e (max |value| %.2f)", max_diff, max_want);
    detail = buf;
  } else if (ok && dtype == "string") {
    ok = got.dtype() == tensorflow::DT_STRING;
    int64_t same = 0;
    std::string line;
    for (int64_t i = 0; ok && i < got.NumElements(); ++i) {
      ok = static_cast<bool>(std::getline(f, line));
      same += ok && line == std::string(got.flat<tensorflow::tstring>()(i));
    }
    ok = ok && same == got.NumElements() && !std::getline(f, line);
    detail = std::to_string(same) + " of " + std::to_string(got.NumElements()) + " strings equal to the portable's";
    if (got.NumElements() > 0) detail += " (first: \"" + std::string(got.flat<tensorflow::tstring>()(0)) + "\")";
  } else {
    ok = false;
  }
  std::printf("%s %s: shape %s, %s\n", ok ? "ok" : "FAILED", name.c_str(), got.shape().DebugString().c_str(),
              detail.c_str());
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CASE_FILE [OP_LIBRARY...]\n", argv[0]);
    return 2;
  }
  for (int i = 2; i < argc; ++i) {
    if (dlopen(argv[i], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
      std::fprintf(stderr, "serve_once: dlopen(%s): %s\n", argv[i], dlerror());
      return 2;
    }
  }
  std::ifstream in(argv[1]);
  std::string export_dir, signature, line;
  int n_inputs = 0, n_outputs = 0;
  std::getline(in, export_dir);
  std::getline(in, signature);
  std::getline(in, line);
  n_inputs = std::stoi(line);
  std::vector<std::pair<std::string, tensorflow::Tensor>> inputs(n_inputs);
  for (auto& input : inputs) {
    if (!ReadInput(in, &input.first, &input.second)) {
      std::fprintf(stderr, "serve_once: cannot read the inputs of %s\n", argv[1]);
      return 2;
    }
  }
  std::getline(in, line);
  n_outputs = std::stoi(line);
  std::vector<std::string> out_names(n_outputs), out_dtypes(n_outputs), out_files(n_outputs);
  for (int k = 0; k < n_outputs; ++k) {
    std::getline(in, line);
    std::istringstream(line) >> out_names[k] >> out_dtypes[k] >> out_files[k];
  }

  tensorflow::SavedModelBundle bundle;
  const absl::Status loaded = tensorflow::LoadSavedModel(tensorflow::SessionOptions(), tensorflow::RunOptions(),
                                                          export_dir, {"serve"}, &bundle);
  if (!loaded.ok()) {
    std::fprintf(stderr, "serve_once: LoadSavedModel(%s): %s\n", export_dir.c_str(), loaded.ToString().c_str());
    return 1;
  }
  const auto& signatures = bundle.meta_graph_def.signature_def();
  const auto it = signatures.find(signature);
  if (it == signatures.end()) {
    std::fprintf(stderr, "serve_once: no signature %s\n", signature.c_str());
    return 1;
  }
  const tensorflow::SignatureDef& sig = it->second;
  std::vector<std::pair<std::string, tensorflow::Tensor>> feeds;
  for (const auto& input : inputs) feeds.emplace_back(sig.inputs().at(input.first).name(), input.second);
  std::vector<std::string> fetches;
  for (const std::string& n : out_names) fetches.push_back(sig.outputs().at(n).name());
  std::vector<tensorflow::Tensor> outputs;
  const absl::Status ran = bundle.session->Run(feeds, fetches, {}, &outputs);
  if (!ran.ok()) {
    std::fprintf(stderr, "serve_once: Session::Run(%s): %s\n", signature.c_str(), ran.ToString().c_str());
    return 1;
  }
  int failed = 0;
  for (int k = 0; k < n_outputs; ++k) failed += Compare(out_names[k], out_dtypes[k], out_files[k], outputs[k]);
  return failed ? 1 : 0;
}
