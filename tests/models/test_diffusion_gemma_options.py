"""DiffusionGemma's generation options as `DiffusionGemmaForBlockDiffusion.generate` takes them
(transformers/models/diffusion_gemma/generation_diffusion_gemma.py: `generate`,
`_prepare_generation_config`, `DiffusionGemmaGenerationConfig.validate`, `_finalize_canvas`):

- one shared generator in the default `batch: live` mode draws what generate draws, over 100 seeds
  (rows that ended in an earlier canvas keep generate's step count);
- a checkpoint's own generation_config.json sets the sampler's defaults (steps, entropy bound,
  temperatures, confidence, stability) and its EOS list ends rows, as generate reads them;
- t_max and confidence above 1 are accepted as generate accepts them; t_min = t_max = 0 is refused
  when the suite is planned;
- each record's steps are its row's own (batch 1 and batch 4 give the same records).

The generate side runs the installed transformers with its global-RNG draws routed to a seeded
torch.Generator (tests/models/test_diffusion_gemma_parity.py)."""
from __future__ import annotations

import pytest
import torch

from harness.registry import MODELS, SAMPLERS
from harness.types import HarnessError

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "DiffusionGemmaForBlockDiffusion"):
    pytest.skip("this transformers has no DiffusionGemma", allow_module_level=True)

from tests.models.test_diffusion_gemma_parity import (  # noqa: E402
    EOS,
    PAD,
    as_harness,
    build,
    global_draws_from,
    harness_generate,
    hf_generate,
    prompts,
)


@pytest.fixture(scope="module")
def peaked():
    return build(0, peaked=True)


@pytest.mark.slow  # 100 seeds of generate and the sampler: ~100 s on one core
def test_shared_generator_live_mode_draws_as_generate_over_100_seeds(peaked):
    """B=2, L=24 (three canvases): before, a row that ended early left the batch and the canvas
    stopped when the other row was done, while generate kept stepping (and drawing) until the ended
    row's canvas was done too: 11 of these 100 seeds then gave other tokens."""
    differ = []
    for seed in range(100):
        prompt, pmask = prompts(2, 6, seed=seed)
        new, passes, _ = hf_generate(peaked, prompt, pmask, 24, seed=seed)
        gen, _ = harness_generate(peaked, prompt, pmask, 24, seed=seed)  # batch: live, one shared generator
        if not (torch.equal(gen.tokens, as_harness(new, 24)) and torch.equal(gen.row_steps, passes.long())):
            differ.append(seed)
    assert differ == []


GEN_CONFIG = dict(max_denoising_steps=20, t_min=0.9, t_max=1.6, confidence_threshold=1.5, stability_threshold=2,
                  entropy_bound=0.3, pad_token_id=PAD)


def saved_with_generation_config(d, path, **cfg):
    """The module saved like a hub checkpoint, with a generation_config.json of its own."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        DiffusionGemmaGenerationConfig,
        EntropyBoundSamplerConfig,
    )

    from harness.models._hf_common import save_pretrained_dir

    cfg = dict(cfg)
    bound = cfg.pop("entropy_bound")
    old = d.module.generation_config
    d.module.generation_config = DiffusionGemmaGenerationConfig(
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=bound), **cfg)
    try:
        save_pretrained_dir(d.module, d.tokenizer.hf, path)
    finally:
        d.module.generation_config = old
    assert (path / "generation_config.json").is_file()
    return path


def generate_with_its_own_config(d, prompt, pmask, L: int, seed: int):
    """generate with nothing but the model's generation_config.json (no knobs passed)."""
    with global_draws_from(torch.Generator().manual_seed(seed)):
        out = d.module.generate(prompt, attention_mask=pmask, max_new_tokens=L)
    return out.sequences[:, prompt.shape[1]:]


def test_a_checkpoints_generation_config_sets_the_defaults_and_its_eos_list(peaked, tmp_path):
    """Before, the sampler used generate's global defaults and the tokenizer's single EOS whatever
    the checkpoint said (61.5% token agreement on such a checkpoint)."""
    # a second EOS id: a token generate writes early under this config (so the list really ends rows)
    first = saved_with_generation_config(peaked, tmp_path / "probe", eos_token_id=[EOS], **GEN_CONFIG)
    probe = MODELS.build("diffusion_gemma", {"path": str(first), "device": "cpu", "dtype": "float32"}).load()
    early = generate_with_its_own_config(probe, *prompts(3, 6, seed=0), 16, 0)[:, :4]
    other = next(int(t) for t in early.flatten() if int(t) not in (EOS, PAD))
    path = saved_with_generation_config(peaked, tmp_path / "dg-genconfig", eos_token_id=[EOS, other], **GEN_CONFIG)
    d = MODELS.build("diffusion_gemma", {"path": str(path), "device": "cpu", "dtype": "float32"}).load()
    assert d.generation_defaults == {"max_steps": 20, "t_min": 0.9, "t_max": 1.6, "confidence": 1.5, "stability": 2,
                                     "bound": 0.3}
    assert d.stop_ids == (EOS, other)
    ended_by_other = 0
    for seed in range(6):
        prompt, pmask = prompts(3, 6, seed=seed, uneven=seed % 2 == 1)
        new = generate_with_its_own_config(d, prompt, pmask, 16, seed)
        total = new.shape[1]
        for batch in ("generate", "live"):
            gen = SAMPLERS.build("uniform_entropy_bound", {"batch": batch})(
                d, prompt, prompt_mask=pmask, gen_length=16, generator=torch.Generator().manual_seed(seed))
            stop = torch.isin(new, torch.tensor([EOS, other]))
            after = (stop.cumsum(1) > 0) & ~(stop & (stop.cumsum(1) == 1))
            want = torch.where(after, torch.full_like(new, EOS), new)  # the harness pads after a stop with EOS
            assert torch.equal(gen.tokens[:, :total], want), (seed, batch)
            assert (gen.tokens[:, total:] == EOS).all()
        stops = torch.isin(new, torch.tensor([EOS, other]))
        firsts = new[torch.arange(new.shape[0]), stops.long().argmax(1)][stops.any(1)]
        ended_by_other += int((firsts == other).sum())
    assert ended_by_other > 0  # the list's second id really ended rows


def test_temperature_and_confidence_above_1_are_accepted_as_generate_accepts_them(peaked):
    prompt, pmask = prompts(2, 6, seed=1)
    knobs = {"t_min": 1.2, "t_max": 2.5, "confidence": 1.5}
    new, passes, _ = hf_generate(peaked, prompt, pmask, 16, seed=4, t_min=1.2, t_max=2.5, confidence_threshold=1.5)
    gen, _ = harness_generate(peaked, prompt, pmask, 16, seed=4, batch="generate", **knobs)
    assert torch.equal(gen.tokens, as_harness(new, 16)) and torch.equal(gen.row_steps, passes.long())


def test_zero_temperature_is_refused_when_the_suite_is_planned(tmp_path):
    from harness.config import load_suite, plan

    def suite(params):
        text = ("suite: t\nmodels:\n  m: {name: diffusion_gemma, params: {preset: tiny}}\ntasks:\n"
                "  add: {name: addition, params: {}}\nstudies:\n  - id: s\n    kind: generate\n    model: m\n"
                f"    task: add\n    sampler: {{name: uniform_entropy_bound, params: {params}}}\n")
        (tmp_path / "s.yaml").write_text(text)
        return plan(load_suite(tmp_path / "s.yaml"))

    with pytest.raises(HarnessError, match=r"t_max > 0 .*t_min = t_max = 0"):
        suite("{t_min: 0.0, t_max: 0.0}")
    with pytest.raises(HarnessError, match=r"t_min <= t_max"):
        suite("{t_min: 0.6, t_max: 0.5}")
    assert suite("{t_min: 1.0, t_max: 3.0, confidence: 2.0}")
    d = build(0, peaked=False)
    d.generation_defaults = {"t_min": 0.0, "t_max": 0.0}  # a generation_config.json that sets zero
    with pytest.raises(HarnessError, match="generation_config.json.*t_max > 0"):
        SAMPLERS.build("uniform_entropy_bound", {})(d, torch.zeros(1, 4, dtype=torch.long),
                                                   generator=torch.Generator().manual_seed(0), gen_length=8)


SUITE = """
suite: dg-steps
models:
  dg: {{name: diffusion_gemma, params: {{path: {path}, device: cpu, dtype: float32}}}}
tasks:
  add: {{name: addition, params: {{n_digits: 2}}, split: test, n_items: 4}}
studies:
  - id: gen
    kind: generate
    model: dg
    task: add
    sampler: {{name: uniform_entropy_bound, params: {{}}}}
    batch_size: {batch}
"""


def test_each_record_states_its_rows_own_steps(peaked, tmp_path):
    """Batch 1 and batch 4 give identical records (one generator per unit), steps included: a row's
    steps are its own denoising passes, not the batch's step counter."""
    from harness.models._hf_common import save_pretrained_dir
    from harness.records import read_records
    from harness.runner import Runner

    path = save_pretrained_dir(peaked.module, peaked.tokenizer.hf, tmp_path / "dg")
    steps = {}
    for batch in (1, 4):
        suite = tmp_path / f"b{batch}.yaml"
        suite.write_text(SUITE.format(path=path, batch=batch))
        recs = read_records(Runner(suite, results=tmp_path / f"r{batch}", progress=False).run())
        steps[batch] = {r["item_id"]: r["generation"]["steps"] for r in recs}
    assert steps[1] == steps[4] and len(set(steps[1].values())) > 1  # rows really stop at different steps
