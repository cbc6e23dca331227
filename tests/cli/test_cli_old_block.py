"""A model with GPT-2's block, saved before packages recorded their block (format_version 1),
registered as a version: it still generates its text and compares with a model of today's block.
"""

from __future__ import annotations

import json

import mlflow
import pytest
from tiny_project import OLD_BLOCK_PACKAGE, OLD_BLOCK_TEXT


@pytest.fixture
def old_version(own_store) -> str:
    """The old package registered in a store of this test's own, as a run's artifact."""
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(OLD_BLOCK_PACKAGE), "model")
    client = mlflow.MlflowClient()
    client.create_registered_model("gpt2-block")
    client.create_model_version("gpt2-block", f"{run.info.artifact_uri}/model", run.info.run_id)
    return "models:/gpt2-block/1"


def test_a_registered_version_of_the_old_block_generates_what_it_did(invoke, old_version):
    result = invoke("generate", "--model-uri", old_version, "--prompt", "ROMEO:", "--json",
                    "--max-tokens", "40", "--seed", "1337", "--temperature", "0.8")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)[0]["text"] == OLD_BLOCK_TEXT


def test_compare_scores_a_model_of_the_old_block_against_one_of_the_new(invoke, old_version,
                                                                        tiny_model, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("ROMEO: But soft, what light through yonder window breaks?\n" * 20)
    result = invoke("compare", old_version, "models:/tiny/1", "--text", text, "--json")
    assert result.exit_code == 0, result.stderr
    scores = json.loads(result.stdout)
    assert 0 < scores["a_bits_per_char"] < scores["b_bits_per_char"]  # A learned this text
