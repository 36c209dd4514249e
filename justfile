# The workspace's commands. Every recipe is a plain cargo/python command: `just` is a convenience,
# never a requirement (the README lists the same commands).

default: test

# The main job: the default ablation (or an experiment file given as argument).
ablate *ARGS:
    cargo run --release -p vcp-cli -- ablate {{ARGS}}

# Pretrain the embedded `tiny_pretrained` CLIP again (~90 min on 2 cores; see its model card).
pretrain-clip *ARGS:
    cargo run --release -p vcp-cli -- pretrain-clip --config experiments/pretrain_tiny_clip.toml {{ARGS}}

# Every committed result table again (from a clean, committed tree).
rerun-results:
    bash tools/rerun_results.sh

# The Python metrics package: install into the active environment and test it.
python-metrics:
    pip install ./crates/vcp-metrics-py pytest scikit-learn scikit-image scipy pillow
    python -m pytest -q crates/vcp-metrics-py/tests

# Tables and plots again from an experiment's records.
report EXPERIMENT:
    cargo run --release -p vcp-cli -- report {{EXPERIMENT}}

# A small end-to-end smoke run of backbone + metrics.
demo:
    cargo run --release -p vcp-cli -- demo

# The whole test suite (what CI runs, after fmt and clippy).
test:
    cargo test --workspace --release

# Opt-in slow tests.
test-slow:
    cargo test --workspace --release -- --ignored

lint:
    cargo fmt --all --check
    cargo clippy --workspace --release --all-targets -- -D warnings

# Criterion benchmarks (vision forward, metrics).
bench:
    cargo bench -p vcp-clip --bench vision
    cargo bench -p vcp-metrics --bench metrics

# Side-by-side speed against the Python references (needs the venv from `just pyenv`).
bench-metrics:
    bash tools/bench_metrics.sh

bench-clip-cpu:
    bash tools/bench_clip_cpu.sh

# Python environment for regenerating fixtures and running the reference benchmarks (~5 GB, ~8 min).
pyenv:
    python3 -m venv .venv-ref && .venv-ref/bin/pip install torch==2.11.0 "torchvision==0.26.*" transformers==5.24.0 open_clip_torch==3.3.0 safetensors numpy scikit-learn scikit-image scipy pillow ftfy

# Regenerate committed fixtures from the Python references.
fixtures:
    .venv-ref/bin/python tools/fixtures/make_hf_fixtures.py
    .venv-ref/bin/python tools/metrics_reference.py --make-cases crates/vcp-metrics/tests/fixtures/cases

# A CUDA build of `vcp` on this CPU-only machine (nvcc 13.0 from PyPI wheels; see tools/build_cuda.sh).
build-cuda:
    bash tools/build_cuda.sh

# The GPU benchmark (on a GPU machine, with the binary from build-cuda): writes results/bench/gpu.md.
bench-gpu:
    bash tools/bench_gpu.sh

# The property tests of every parser of user files, longer (20 000 mutated files per parser).
fuzz cases="20000":
    VCP_FUZZ_CASES={{cases}} cargo test --release -p vcp-runner --test fuzz_inputs -- --nocapture
