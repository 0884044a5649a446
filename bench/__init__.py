"""esxi-watcher's benchmarks: `python -m bench` (or `bash bench/run`) prints every figure beside its baseline."""
