#!/usr/bin/env python3
"""Records (or checks) llama.cpp's reference output for llm-worker-rbee's tests.

Runs llama-cpp-python on the SmolLM2 GGUF and writes
worker-image/tests/fixtures/smollm2-llamacpp.json with:
  - tokenization: token ids of a few prompts (special tokens parsed, no BOS added)
  - chat: the chat prompt rendered with the GGUF's own chat template (jinja2), its token
    ids, and the greedy completion (token ids and text) for max_tokens tokens.

Usage:
  llamacpp-reference.py --gguf PATH [--out FILE]   write the fixture
  llamacpp-reference.py --gguf PATH --check        regenerate and compare with the
                                                   committed fixture (exit 1 on a difference)
Run it with the venv python printed by scripts/setup-python.
"""
import argparse
import hashlib
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "tests", "fixtures", "smollm2-llamacpp.json")

TOKENIZE_PROMPTS = [
    "Hello, world!",
    "The year 2024 had 366 days.",
    "  leading spaces and\ttabs\nnew lines",
    "<|im_start|>user\nWhat is 12+34?<|im_end|>\n",
    "Ünïcödé — naïve café 日本語 🙂",
]
CHAT_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Explain what photosynthesis is."},
]
MAX_TOKENS = 32


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build(gguf):
    import jinja2
    import llama_cpp

    llm = llama_cpp.Llama(model_path=gguf, n_ctx=2048, n_threads=2, seed=0, verbose=False,
                          logits_all=True)
    tokenization = [
        {"text": t, "ids": llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)}
        for t in TOKENIZE_PROMPTS
    ]
    template = llm.metadata["tokenizer.chat_template"]
    prompt = jinja2.Environment().from_string(template).render(
        messages=CHAT_MESSAGES, add_generation_prompt=True
    )
    prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    eog = {llm.token_eos()}
    for name in ("<|im_end|>", "<|endoftext|>"):
        ids = llm.tokenize(name.encode(), add_bos=False, special=True)
        if len(ids) == 1:
            eog.add(ids[0])
    # Greedy by hand, to also record how far the best token is ahead of the runner-up: where
    # that margin is tiny, another implementation's rounding may pick the other token.
    import numpy as np

    out, margins = [], []
    llm.reset()
    llm.eval(prompt_ids)
    while len(out) < MAX_TOKENS:
        logits = np.array(llm.scores[llm.n_tokens - 1])
        best, second = logits.argsort()[-2:][::-1]
        margins.append(round(float(logits[best] - logits[second]), 4))
        if int(best) in eog:
            break
        out.append(int(best))
        llm.eval([int(best)])
    text = llm.detokenize(out).decode("utf-8", errors="replace")
    return {
        "generator": "worker-image/scripts/llamacpp-reference.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model_sha256": sha256(gguf),
        "tokenization": tokenization,
        "chat": {
            "messages": CHAT_MESSAGES,
            "prompt": prompt,
            "prompt_ids": prompt_ids,
            "max_tokens": MAX_TOKENS,
            "completion_ids": out,
            "completion_text": text,
            "top2_logit_margins": margins,
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="path of SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default=DEFAULT_OUT, help="fixture file (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = ap.parse_args()
    ref = build(args.gguf)
    if args.check:
        with open(args.out, encoding="utf-8") as f:
            committed = json.load(f)
        keys = ("model_sha256", "tokenization", "chat")
        # Margins are floats that may vary in the last digits between CPUs; ids and text must not.
        for d in (committed, ref):
            d.get("chat", {}).pop("top2_logit_margins", None)
        diff = [k for k in keys if committed.get(k) != ref.get(k)]
        if diff:
            print(f"llamacpp-reference: fixture differs in {diff}: rerun without --check", file=sys.stderr)
            print(json.dumps({k: ref[k] for k in diff}, ensure_ascii=False, indent=1), file=sys.stderr)
            return 1
        print("llamacpp-reference: fixture matches llama.cpp", file=sys.stderr)
        return 0
    text = json.dumps(ref, ensure_ascii=False, indent=1)
    # Token id lists on one line each, so the fixture stays readable in diffs.
    text = re.sub(r"\[[\d.,\s-]*\]", lambda m: json.dumps(json.loads(m.group(0))), text)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"llamacpp-reference: wrote {os.path.abspath(args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
