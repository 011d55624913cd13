#!/usr/bin/env bash
# On the GPU machine: bash tools/gpu/old_arch_cluster_check.sh (about 3 minutes, most of it the build).
# A library whose small-LSTM kernels exist only as compute_80 PTX must not plan clusters for
# them on an H100 (their cluster code compiles to nothing below sm_90); the GRU ones (sm_90 SASS) still may.
B=/tmp/g2; mkdir -p $B
for src in cc/cuda/*.cu; do
  a="-gencode arch=compute_90,code=sm_90"
  case $src in *small_lstm*) a="-gencode arch=compute_80,code=compute_80";; esac
  nvcc -std=c++17 -O3 -Xcompiler -fPIC $a --threads 4 -c $src -o $B/$(basename ${src%.cu}).o &
done
nvcc -std=c++17 -O3 -Xcompiler -fPIC -c tools/gpu/fused_rnn_gpu_shim.cc -o $B/shim.o; wait
nvcc -shared -o $B/lib.so $B/fused_rnn_cuda*.o $B/shim.o || exit 1
python3 - <<'EOF'
import sys, time
sys.path.insert(0, 'tools/gpu')
from driver import Lib, run_case
lib = Lib('/tmp/g2/lib.so')
t0 = time.time()
r = run_case(lib, 'lstm auto', cell='lstm', direction='bidirectional', T=12, B=3, H=100, tuning={'mode': 5})
print('lstm auto (PTX compute_80):', 'PASS' if r['passed'] else 'FAIL', r['plan'][:90], f'{time.time() - t0:.1f} s')
try:
    r = run_case(lib, 'lstm forced', cell='lstm', direction='bidirectional', T=12, B=3, H=100,
                 tuning={'mode': 5, 'units_per_block': 25})
    print('lstm forced cluster=4 RAN (wrong):', r['plan'][:90])
except RuntimeError as e:
    print('lstm forced cluster=4 refused (right):', e)
r = run_case(lib, 'gru auto', cell='gru', direction='bidirectional', T=12, B=3, H=100, tuning={'mode': 5})
print('gru auto (sm_90 SASS):', 'PASS' if r['passed'] else 'FAIL', r['plan'][:90])
try:
    r = run_case(lib, 'mode 3 lstm', cell='lstm', direction='bidirectional', T=6, B=3, H=40,
                 tuning={'mode': 3, 'units_per_block': 7})
    print('mode 3 lstm (general kernel, sm_90 SASS):', 'PASS' if r['passed'] else 'FAIL', r['plan'][:60])
except RuntimeError as e:
    print('mode 3 lstm refused:', e)
EOF
