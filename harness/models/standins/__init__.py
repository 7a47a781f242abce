"""Small self-written PyTorch stand-ins with the interface of the LLaDA and Dream remote code.

Each stand-in file is self-contained apart from `standin_layers.py` (imported relatively), so a
directory saved with `harness.models._hf_common.save_pretrained_dir` loads through transformers'
`trust_remote_code` exactly as the real checkpoints do. Nothing here is imported by `import harness`.
"""
