"""``--compile`` compiles the model once per input shape, not once per training step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vqkit.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


# Codebooks with a dead-code restart every 4 steps; gumbel with a temperature that anneals every step.
CASES = {"vq": {"restart_after": 4}, "rvq": {"restart_after": 4}, "gumbel": {"anneal_steps": 20}}


@pytest.mark.parametrize("quantizer", list(CASES))
def test_compile_does_not_recompile_as_the_steps_go_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quantizer: str
) -> None:
    # Dynamo's guards and recompiles do not depend on the backend: a counting backend that runs the
    # captured graph eagerly sees every compilation without Inductor's code generation (seconds, not minutes).
    compiled_at: list[int] = []
    done = [0]

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        compiled_at.append(done[0])
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **_kw: real_compile(model, backend=counting_backend))
    torch._dynamo.reset()

    def after(step: int, _model: object) -> None:
        done[0] = step

    config = TrainConfig(
        steps=50,
        batch_size=8,
        log_every=10,
        eval_every=0,
        eval_images=8,
        checkpoint_every=0,
        out=str(tmp_path / "run"),
        progress=False,
        compile=True,
        model={"quantizer": quantizer, "quantizer_options": CASES[quantizer]},
    )
    # At most 2 compilations of any one frame: a third raises instead of quietly running that frame eagerly.
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        train(config, callback=after)
    # Everything compiles during the first step (k-means init, one graph per segment around the eager
    # codebook upkeep); the 49 steps after it, dead-code checks and restarts included, reuse those graphs.
    assert compiled_at and all(step == 0 for step in compiled_at), compiled_at


def test_loading_the_plugins_leaves_dynamo_unimported() -> None:
    """Importing Dynamo costs over a second; a command that never compiles (or stops at a misspelt name) must
    not pay for it just by loading the built-in components."""
    import subprocess
    import sys

    code = (
        "import sys, vqkit; vqkit.load_plugins(); vqkit.build_model(quantizer='rvq');"
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
