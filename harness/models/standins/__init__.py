"""Small self-written PyTorch stand-ins with the interface of the LLaDA and Dream remote code.

Each stand-in file imports only transformers, torch and `standin_layers.py` (relatively), so a
directory saved with `harness.models._hf_common.save_pretrained_dir` (which copies both files
beside the weights) loads through transformers' `trust_remote_code` exactly as the real
checkpoints do. `standin_layers.py` imports torch only: it holds the layers, the decoder loop and
the LLaDA and Dream blocks that the native models (harness/models/native) build from too, so the
two implementations cannot drift apart. Nothing here is imported by `import harness`.
"""
