"""Native (torch-only) implementations of the LLaDA and Dream architectures.

They load the official checkpoints (config.json + safetensors, sharded or not) by parameter name,
without the checkpoint's remote code and without transformers in the forward pass. `llada.py` and
`dream.py` hold the modules, `checkpoint.py` the reading and writing of checkpoint directories.
Nothing here is imported by `import harness`.
"""
