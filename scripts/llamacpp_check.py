"""Load an exported GGUF with llama.cpp itself and compare its greedy continuation with transformers' on the
source folder. llama.cpp is not a dependency: build its `llama-simple` example (e.g. from the llama.cpp source
inside the llama-cpp-python sdist: cmake -B build -DLLAMA_CURL=OFF && cmake --build build --target llama-simple)
and pass the binary.

    .venv/bin/python scripts/llamacpp_check.py LLAMA_SIMPLE SOURCE_DIR EXPORT_DIR [--tokens 24]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("llama_simple")
    parser.add_argument("source_dir")
    parser.add_argument("export_dir")
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = json.loads((Path(args.export_dir) / "export.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(args.source_dir)
    model = AutoModelForCausalLM.from_pretrained(args.source_dir, dtype=torch.float32).eval()
    questions = ["What does a Python list hold?", "How do I open a file for reading?"]
    same = 0
    for question in questions:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True)  # fmt: skip
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=args.tokens, do_sample=False)
        reference = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        run = subprocess.run([args.llama_simple, "-m", str(Path(args.export_dir) / export["gguf"]), "-n",
                              str(args.tokens), prompt], capture_output=True, text=True, timeout=300)  # fmt: skip
        if run.returncode != 0:
            print(run.stderr[-2000:], file=sys.stderr)
            return 1
        generated = (
            run.stdout[run.stdout.rfind("assistant\n") + len("assistant\n") :]
            if "assistant\n" in run.stdout
            else run.stdout
        )
        generated = generated.split("<|im_end|>")[0].strip()
        match = generated.startswith(reference.strip()[: max(8, len(reference.strip()) // 2)])
        same += match
        print(json.dumps({"question": question, "transformers": reference.strip(), "llama.cpp": generated,
                          "same_start": match}, ensure_ascii=False))  # fmt: skip
    print(
        f"llama.cpp loaded {export['gguf']} ({export['outtype']}); {same}/{len(questions)} greedy answers start alike"
    )
    return 0 if same == len(questions) else 1


if __name__ == "__main__":
    sys.exit(main())
