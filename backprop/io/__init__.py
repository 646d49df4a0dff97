"""Files a run writes and reads on the host: model files and checkpoints (safetensors), atomic writes, and the
lock that keeps two runs out of one directory."""
