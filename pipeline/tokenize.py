"""DVC stage tokenize: fit the tokenizer on train -> models/tokenizer.json + data/tokens/."""

from tinyllm import workflow

if __name__ == "__main__":
    workflow.run_stage(workflow.tokenize)
