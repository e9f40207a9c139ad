"""``regimen generate``: sample text from a language-model checkpoint.

Example: ``regimen generate --checkpoint runs/lm/checkpoint.pt --prompt "In the beginning" --tokens 200
--temperature 0.8 --top-k 40 --seed 0``. The checkpoint's model spec rebuilds the GPT and its tokenizer (bytes, or
the BPE the run trained); the same seed gives the same text.
"""

from __future__ import annotations

from regimen.errors import ConfigurationError

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> str:  # noqa: ANN001 - argparse's private type
    parser = subparsers.add_parser(
        "generate", help="sample text from a language-model checkpoint",
        description="Continue a prompt with a language model trained by `regimen train` (task language_model).")
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt of a language_model run")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens to sample (default 200)")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    return "generate"


def load_language_model(path: str):
    """``(model, tokenizer)`` rebuilt from a language_model checkpoint."""
    from regimen.data.tokenizers import tokenizer_from_spec
    from regimen.models import GPT
    from regimen.train.checkpoint import load_checkpoint, load_model_state

    state = load_checkpoint(path)
    if state.get("task") != "language_model":
        raise ConfigurationError(f"--checkpoint {path} is a checkpoint of task {state.get('task')!r}, not of "
                                 "'language_model'")
    spec = state.get("model_spec") or {}
    if spec.get("name") != "gpt" or "tokenizer" not in spec:
        raise ConfigurationError(f"--checkpoint {path}: its model ({spec.get('name')!r}) has no tokenizer saved; "
                                 "generate needs a GPT trained on text (not on a token array)")
    options = dict(spec.get("options", {}))
    options.setdefault("block_size", int(spec["input_shape"][0]))
    model = GPT(vocab_size=int(spec["vocab_size"]), **options)
    for entry in (state.get("recipe") or {}).get("methods", []):
        if entry.get("name") == "mup":  # its multipliers are part of the forward, not of the weights
            from regimen.batch import apply_mup

            apply_mup(model, int(entry.get("base_width", 64)), float(entry.get("output_mult", 1.0)))
    load_model_state(model, state["model"], str(path))
    return model.eval(), tokenizer_from_spec(spec["tokenizer"])


def run(args) -> int:  # noqa: ANN001
    import torch

    from regimen.models.gpt import generate

    if args.tokens < 0:
        raise ConfigurationError(f"--tokens must be >= 0, got {args.tokens}")
    if args.temperature < 0:
        raise ConfigurationError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigurationError(f"--top-k must be >= 1, got {args.top_k}")
    model, tokenizer = load_language_model(args.checkpoint)
    prompt = tokenizer.encode(args.prompt)
    if len(prompt) == 0:
        raise ConfigurationError("--prompt must not be empty")
    ids = torch.as_tensor(prompt, dtype=torch.long).unsqueeze(0)
    out = generate(model, ids, args.tokens, args.temperature, args.top_k,
                   torch.Generator().manual_seed(args.seed))
    print(tokenizer.decode(out[0]))
    return 0
