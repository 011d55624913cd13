#!/usr/bin/env bash
# The TF Serving recipe's build, checked (export/SERVING.md, steps 2-3): a scratch Bazel workspace laid out like TF
# Serving's declares this repository exactly as the recipe says (local_repository with the repo_mapping, our
# cuda_configure as @fused_rnn_cuda), stands in @org_tensorflow//tensorflow/core:{framework,lib} and
# @com_google_absl//absl/{status,strings} with the pip TensorFlow's headers and libtensorflow_framework.so.2, and
# builds a program that links @fused_rnn//cc:serving_ops without naming any of its symbols. That program must find
# every op that cc/tf/ops.cc registers, each with a CPU kernel, in TensorFlow's registries (what a model server
# linking the target would hold); the same program built without the target must find none (so the check can fail).
# Not checked here: TF Serving's own toolchain and its static TensorFlow (see export/SERVING.md).
#
# Run by tools/test.sh after tools/setup.sh (it needs .tf_configure.bazelrc). The workspace lives in
# .serving_check/ (ignored by git and by this repository's own Bazel), so a second run is incremental.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
t0=$(date +%s)
if [ ! -f "$repo/.tf_configure.bazelrc" ]; then
  echo "serving build check: no .tf_configure.bazelrc (run tools/setup.sh first)"
  exit 1
fi
ops=$(sed -n 's/^REGISTER_OP("\([A-Za-z0-9]*\)").*/\1/p' "$repo/cc/tf/ops.cc")
if [ -z "$ops" ]; then
  echo "serving build check: found no REGISTER_OP in cc/tf/ops.cc"
  exit 1
fi

ws="$repo/.serving_check"
mkdir -p "$ws"
# This repository as TF Serving's checkout would hold it: the tracked files only (no .venv, bazel-*, .so).
rm -rf "$ws/fused_rnn"
mkdir -p "$ws/fused_rnn"
(cd "$repo" && git ls-files -z | xargs -0 cp --parents -t "$ws/fused_rnn")

# Stand-ins for the TF Serving workspace's TensorFlow and abseil targets, backed by the pip TensorFlow
# (@pip_tf, made by this repository's own tf_configure rule).
mkdir -p "$ws/stubs/org_tensorflow/tensorflow/core" "$ws/stubs/com_google_absl/absl/status" \
  "$ws/stubs/com_google_absl/absl/strings"
for r in org_tensorflow com_google_absl; do
  echo "workspace(name = \"$r\")" > "$ws/stubs/$r/WORKSPACE"
  : > "$ws/stubs/$r/BUILD"
done
pip_tf_lib() {  # a cc_library named $1 that stands for a TF Serving target
  printf 'cc_library(\n    name = "%s",\n    visibility = ["//visibility:public"],\n    deps = [\n        "@pip_tf//:tf_header_lib",\n        "@pip_tf//:libtensorflow_framework",\n    ],\n)\n' "$1"
}
{ pip_tf_lib framework; pip_tf_lib lib; } > "$ws/stubs/org_tensorflow/tensorflow/core/BUILD"
pip_tf_lib status > "$ws/stubs/com_google_absl/absl/status/BUILD"
pip_tf_lib strings > "$ws/stubs/com_google_absl/absl/strings/BUILD"

cat > "$ws/WORKSPACE" <<'EOF'
workspace(name = "serving_check")

# Offline, as this repository's own WORKSPACE: Bazel's tools would otherwise download these.
local_repository(name = "rules_cc", path = "fused_rnn/third_party/rules_cc")
local_repository(name = "rules_java", path = "fused_rnn/third_party/rules_java")
local_repository(name = "remote_coverage_tools", path = "fused_rnn/third_party/remote_coverage_tools")

# export/SERVING.md, step 2, verbatim.
local_repository(
    name = "fused_rnn",
    path = "fused_rnn",  # relative to the serving checkout, or an absolute path the build can see
    repo_mapping = {"@local_config_cuda": "@fused_rnn_cuda"},
)

load("@fused_rnn//third_party/cuda:cuda_configure.bzl", fused_rnn_cuda_configure = "cuda_configure")

fused_rnn_cuda_configure(name = "fused_rnn_cuda")

# What TF Serving's workspace has, here from the pip TensorFlow.
load("@fused_rnn//third_party/tf:tf_configure.bzl", "tf_configure")

tf_configure(name = "pip_tf")

local_repository(name = "org_tensorflow", path = "stubs/org_tensorflow")

local_repository(name = "com_google_absl", path = "stubs/com_google_absl")
EOF
# TensorFlow's C++ runtime (sessions, SavedModel loading, the standard kernels) for serve_once: in TF Serving it is
# linked statically; the pip package has it as libtensorflow_cc.so.2.
tf_lib_dir=$(sed -n 's/.*--repo_env=TF_SHARED_LIBRARY_DIR="\(.*\)"/\1/p' "$repo/.tf_configure.bazelrc")
cat >> "$ws/WORKSPACE" <<EOF

new_local_repository(
    name = "pip_tf_cc",
    path = "$tf_lib_dir",
    build_file_content = """cc_import(
    name = "tensorflow_cc",
    shared_library = "libtensorflow_cc.so.2",
    visibility = ["//visibility:public"],
)""",
)
EOF
cp "$repo/tools/serving_check/BUILD.scratch" "$ws/BUILD"
cp "$repo/tools/serving_check/ops_registered.cc" "$repo/tools/serving_check/serve_once.cc" "$ws/"
{
  echo "# Written by tools/check_serving_build.sh: the pip TensorFlow's paths, as in .tf_configure.bazelrc."
  grep -- '--repo_env=TF_' "$repo/.tf_configure.bazelrc"
  echo "build --cxxopt=-std=c++17"
  echo "build --copt=-fPIC"
  echo "build --spawn_strategy=standalone"
} > "$ws/.bazelrc"

cd "$ws" || exit 1
# FUSED_RNN_NVCC unset, as in a TF Serving build of this recipe: @fused_rnn_cuda says CUDA_CONFIGURED = False.
if ! env -u FUSED_RNN_NVCC -u FUSED_RNN_CUDA_ROOT bazel build --noshow_progress //:ops_registered //:ops_absent //:serve_once \
    //:serve_once_without_ops \
    > "$ws/build.log" 2>&1; then
  tail -40 "$ws/build.log"
  echo "serving build check: FAILED to build @fused_rnn//cc:serving_ops in the TF-Serving-like workspace"
  exit 1
fi
status=0
# (TF_CPP_MIN_LOG_LEVEL: without TensorFlow's op library, the framework warns about kernels of ops it lacks.)
# shellcheck disable=SC2086
TF_CPP_MIN_LOG_LEVEL=2 bazel-bin/ops_registered present $ops 2> "$ws/present.err" || status=1
# shellcheck disable=SC2086
TF_CPP_MIN_LOG_LEVEL=2 bazel-bin/ops_absent absent $ops > "$ws/absent.log" 2>&1 || { cat "$ws/absent.log"; status=1; }
tail -1 "$ws/absent.log"
# A fused SavedModel loaded and run by a C++ program with the ops linked in (a model server's path), against the
# portable export's outputs in Python.
rm -rf "$ws/case"
mkdir -p "$ws/case"
if "$repo/.venv/bin/python" "$repo/tools/serving_check/make_case.py" "$ws/case" > "$ws/case.log" 2>&1; then
  tail -2 "$ws/case.log"
  TF_CPP_MIN_LOG_LEVEL=2 bazel-bin/serve_once "$ws/case/case_elmo.txt" || status=1
  TF_CPP_MIN_LOG_LEVEL=2 bazel-bin/serve_once "$ws/case/case_nmt.txt" "$(cat "$ws/case/oplibs_nmt.txt")" || status=1
  if TF_CPP_MIN_LOG_LEVEL=2 bazel-bin/serve_once_without_ops "$ws/case/case_elmo.txt" > "$ws/without.log" 2>&1 ||
      ! grep -q "FusedLSTMSequence" "$ws/without.log"; then
    cat "$ws/without.log"
    echo "serving build check: the program without the ops did not fail on the fused op as it must"
    status=1
  else
    echo "ok: without the ops the same program fails: $(grep -o "Op type not registered '[A-Za-z0-9]*'" "$ws/without.log" | head -1)"
  fi
else
  tail -20 "$ws/case.log"
  echo "serving build check: making the SavedModel case FAILED"
  status=1
fi
bazel shutdown > /dev/null 2>&1
if [ $status = 0 ]; then
  echo "serving build check: ok (@fused_rnn//cc:serving_ops built as an external repository with the recipe's" \
    "repo_mapping; $(echo $ops | wc -w) ops and CPU kernels registered; fused ELMo and NMT SavedModels loaded and run" \
    "from C++ as a model server would, matching the portable exports; $(( $(date +%s) - t0 )) s)"
else
  echo "serving build check: FAILED"
fi
exit $status
