"""The `tinygpt` command as a user runs it: output equals the API, help lists every option, expected errors
are one line with exit 1 and no traceback, usage errors exit 2."""
import json
import os
import subprocess
import sys

import pytest

import tinygpt


def run(*args, stdin=None, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "tinygpt", *map(str, args)], capture_output=True, text=True,
                          input=stdin, env=e, timeout=300)


def test_generate_matches_api(tiny_dir, tiny_converted):
    expected = tinygpt.load(tiny_dir, backend="numpy").generate("Hello world", max_new_tokens=32, temperature=0)
    for path in (tiny_dir, tiny_converted):
        r = run("generate", "Hello world", "-m", path, "-n", 32, "--temperature", 0)
        assert r.returncode == 0, r.stderr
        assert r.stdout == expected + "\n"
        assert r.stderr == ""


def test_generate_backends_and_timings(tiny_dir):
    outs = set()
    for b in tinygpt.available_backends():
        r = run("generate", "Hello", "-m", tiny_dir, "-n", 16, "--greedy", "--backend", b, "--timings", "--no-stream")
        assert r.returncode == 0, r.stderr
        assert "prefill:" in r.stderr and "decode:" in r.stderr and "tok/s" in r.stderr
        outs.add(r.stdout)
    assert len(outs) == 1


def test_stdin_prompt_and_stop(tiny_dir):
    r = run("generate", "-m", tiny_dir, "-n", 8, "--greedy", stdin="Hello world")
    assert r.returncode == 0 and r.stdout.strip()
    full = r.stdout.rstrip("\n")
    stop = full[2:5]
    r = run("generate", "-m", tiny_dir, "-n", 8, "--greedy", "--stop", stop, stdin="Hello world")
    assert r.stdout == full[: full.index(stop)] + "\n"


def test_help_lists_every_option():
    r = run("generate", "--help")
    assert r.returncode == 0
    for opt in ("--model", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--repeat-penalty", "--seed",
                "--stop", "--backend", "--no-stream", "--timings", "--ignore-eos", "--context-overflow", "--dtype",
                "--threads", "--prompt", "--file", "--min-p", "--typical", "--presence-penalty", "--frequency-penalty",
                "--logit-bias", "--repeat-last-n", "--allow-special", "--n-predict"):
        assert opt in r.stdout, opt
    r = run("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("generate", "convert", "info", "tokenize"))


@pytest.mark.parametrize("args,msg", [
    (["--temperature", "-1"], "temperature"), (["--top-p", "2"], "top_p"), (["--top-k", "-3"], "top_k"),
    (["--repeat-penalty", "0"], "repeat_penalty"), (["-n", "500"], "context length"),
    (["--bf16-activations"], "needs bfloat16 weights"),
    (["--bf16-activations", "--dtype", "bf16", "--backend", "numpy"], "cpu backend option"),
])
def test_bad_sampling_values(tiny_dir, args, msg):
    r = run("generate", "Hi", "-m", tiny_dir, *args)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and msg in r.stderr and "Traceback" not in r.stderr


def test_errors_are_one_line(tmp_path, tiny_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "model.safetensors").write_bytes(b"garbage")
    cases = [(["-m", "no/such-model-here", "--offline"], "cache"), (["-m", "./missing-dir"], "neither an existing path"),
             (["-m", bad], "safetensors"), (["-m", "not a model name!"], "neither")]
    for args, msg in cases:
        r = run("generate", "Hi", *args, env={"HF_HUB_CACHE": str(tmp_path / "cache")})
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.startswith("tinygpt: error:") and r.stderr.count("\n") == 1, r.stderr
        assert msg in r.stderr, r.stderr


def test_missing_gpu_is_clear(tiny_dir):
    if "cuda" in tinygpt.available_backends():
        pytest.skip("a GPU is present")
    r = run("generate", "Hi", "-m", tiny_dir, "--backend", "cuda")
    assert r.returncode == 1 and "cuda" in r.stderr and "Traceback" not in r.stderr


def test_usage_errors_exit_2():
    assert run("generate", "--top-k", "abc").returncode == 2
    assert run("frobnicate").returncode == 2
    assert run().returncode == 2


def test_info():
    r = run("info", "--json")
    assert r.returncode == 0
    info = json.loads(r.stdout)
    assert info["backends"]["numpy"]["available"]
    for name in ("cpu", "cuda"):
        b = info["backends"][name]
        assert b["detail"], "an unavailable backend must say why"
    r = run("info")
    assert r.returncode == 0 and "backends:" in r.stdout


def test_tokenize(tiny_dir):
    r = run("tokenize", "Hello world", "-m", tiny_dir)
    assert r.stdout.split() == ["15496", "995"]
    r = run("tokenize", "15496 995", "--decode", "-m", tiny_dir)
    assert r.stdout == "Hello world\n"


def test_convert(tmp_path, tiny_dir):
    out = tmp_path / "conv"
    r = run("convert", tiny_dir, out, "--dtype", "bfloat16")
    assert r.returncode == 0, r.stderr
    r = run("info", "-m", out, "--json")
    assert json.loads(r.stdout)["model"]["dtype"] == "bfloat16"
    r = run("convert", tiny_dir, tmp_path / "q8", "--dtype", "int8")
    info = json.loads(run("info", "-m", tmp_path / "q8", "--json").stdout)["model"]
    C, L, V, P = 32, 2, 50257, 128
    assert info["parameters"] == V * C + P * C + L * (12 * C * C + 13 * C) + 2 * C  # scales are not parameters
    r = run("convert", tmp_path / "nothing", out)
    assert r.returncode == 1 and r.stderr.count("\n") == 1


# -- habits from llama.cpp, transformers, OpenAI, vLLM ---------------------------------------------------------
def test_prompt_options_and_file(tiny_dir, tmp_path):
    want = run("generate", "Hello world", "-m", tiny_dir, "-n", 8, "--greedy").stdout
    assert run("generate", "-p", "Hello world", "-m", tiny_dir, "-n", 8, "--greedy").stdout == want
    f = tmp_path / "prompt.txt"
    f.write_text("Hello world\n")  # one trailing newline is dropped, as llama.cpp's -f does
    r = run("generate", "-f", f, "-m", tiny_dir, "--n-predict", 8, "--temp", 0)
    assert r.returncode == 0 and r.stdout == want, r.stderr
    for args, msg in [(["-p", "a", "b"], "give the prompt once"), (["-f", tmp_path / "none.txt"], "cannot read"),
                      (["-f", tmp_path], "cannot read")]:
        r = run("generate", *args, "-m", tiny_dir)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and msg in r.stderr, r.stderr
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9")
    r = run("generate", "-f", bad, "-m", tiny_dir)
    assert r.returncode == 1 and "not UTF-8" in r.stderr and r.stderr.count("\n") == 1


def test_seed_minus_one_and_n_minus_one(tiny_dir):
    a = run("generate", "Hi", "-m", tiny_dir, "-n", 6, "--seed", -1, "-v")
    b = run("generate", "Hi", "-m", tiny_dir, "-n", 6, "-s", -1, "-v")
    assert a.returncode == 0 and b.returncode == 0
    seeds = [line for r in (a, b) for line in r.stderr.splitlines() if "seed: " in line]
    assert len(seeds) == 2 and seeds[0] != seeds[1]  # random, and the seed used is printed
    r = run("generate", "Hi", "-m", tiny_dir, "-n", -1, "--greedy", "--ignore-eos", "--timings")
    assert r.returncode == 0, r.stderr
    assert "decode: 126 steps" in r.stderr  # 127 tokens: the context (128) minus the prompt (1)
    r = run("generate", "Hi", "-m", tiny_dir, "-n", -2)
    assert r.returncode == 1 and "-1 (until <|endoftext|>" in r.stderr


@pytest.mark.parametrize("alias,canon", [("f32", "float32"), ("fp32", "float32"), ("f16", "float16"),
                                         ("fp16", "float16"), ("half", "float16"), ("BF16", "bfloat16")])
def test_dtype_aliases(tiny_dir, alias, canon):
    backend = "cpu" if "cpu" in tinygpt.available_backends() else "numpy"  # numpy widens to float32
    r = run("generate", "Hi", "-m", tiny_dir, "-n", 2, "--greedy", "--dtype", alias, "-v", "--backend", backend)
    assert r.returncode == 0, r.stderr
    assert backend == "numpy" or f"dtype='{canon}'" in r.stderr, r.stderr


def test_dtype_alias_convert_and_unknown(tiny_dir, tmp_path):
    r = run("convert", tiny_dir, tmp_path / "c", "--dtype", "bf16")
    assert r.returncode == 0 and "bfloat16" in r.stderr
    r = run("generate", "Hi", "-m", tiny_dir, "--dtype", "q8_0")
    assert r.returncode == 2 and "float16 (f16, fp16, half)" in r.stderr


def test_new_sampler_flags_equal_api(tiny_dir):
    m = tinygpt.load(tiny_dir, backend="numpy")
    want = m.generate("Hello", max_new_tokens=12, seed=5, min_p=0.05, typical_p=0.9, presence_penalty=0.5,
                      frequency_penalty=0.3, repetition_penalty=1.2, repeat_last_n=4,
                      logit_bias={11: float("-inf"), 13: 2.0})
    r = run("generate", "Hello", "-m", tiny_dir, "--backend", "numpy", "-n", 12, "--seed", 5, "--min-p", 0.05,
            "--typical", 0.9, "--presence-penalty", 0.5, "--frequency-penalty", 0.3, "--repeat-penalty", 1.2,
            "--repeat-last-n", 4, "--logit-bias", "11-inf", "--logit-bias", "13+2")
    assert r.returncode == 0 and r.stdout == want + "\n", r.stderr
    for args, msg, code in [(["--logit-bias", "x"], "TOKEN_ID+BIAS", 2), (["--logit-bias", "60000+1"], "0..50256", 1),
                            (["--min-p", "2"], "min_p", 1), (["--presence-penalty", "9"], "[-2, 2]", 1),
                            (["--repeat-last-n", "-5"], "repeat_last_n", 1), (["--typical", "0"], "typical_p", 1)]:
        r = run("generate", "Hello", "-m", tiny_dir, *args)
        assert r.returncode == code and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_allow_special_in_generate(tiny_dir):
    m = tinygpt.load(tiny_dir, backend="numpy")
    want = m.generate([50256, *m.tokenizer.encode("Hi")], max_new_tokens=5, temperature=0)
    r = run("generate", "<|endoftext|>Hi", "-m", tiny_dir, "--backend", "numpy", "-n", 5, "--greedy",
            "--allow-special")
    assert r.stdout == want + "\n" and r.stderr == ""
    r = run("generate", "<|endoftext|>Hi", "-m", tiny_dir, "--backend", "numpy", "-n", 5, "--greedy")
    assert r.returncode == 0 and r.stderr.count("\n") == 1 and "--allow-special" in r.stderr


def test_tokenize_stdin_and_decode_formats(tiny_dir):
    for args, stdin in [(["-"], "Hello world"), ([], "Hello world")]:
        r = run("tokenize", *args, "-m", tiny_dir, stdin=stdin)
        assert r.returncode == 0 and r.stdout.split() == ["15496", "995"], r.stderr
    for ids in ("[15496, 995]", "15496,995", "15496, 995", '{"tokens": [15496, 995]}'):
        r = run("tokenize", "--decode", ids, "-m", tiny_dir)
        assert r.stdout == "Hello world\n", (ids, r.stderr)
    r = run("tokenize", "--decode", "-", "-m", tiny_dir, stdin="[15496, 995]\n")
    assert r.stdout == "Hello world\n"
    for ids, msg in [("[1, x]", "JSON list"), ("1.5", "JSON list"), ("[99999]", "outside the vocabulary"),
                     ("-3", "outside the vocabulary"), ("[true]", "JSON list")]:
        r = run("tokenize", "--decode", ids, "-m", tiny_dir)
        assert r.returncode == 1 and msg in r.stderr and r.stderr.count("\n") == 1, (ids, r.stderr)


def test_generate_file_batch(tiny_dir, tmp_path):
    """-f FILE: several lines run as one batch (JSONL out, file order, each text equal to its single call); a .jsonl
    file carries options per prompt; a one-line file is one prompt streamed as text (llama.cpp's -f)."""
    m = tinygpt.load(tiny_dir)
    prompts = ["Hello world", "The quick brown fox jumps", "A"]
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(prompts) + "\n\n")
    r = run("generate", "-m", tiny_dir, "-f", f, "-n", 6, "--greedy")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["index"] for x in rows] == [0, 1, 2]
    assert [x["text"] for x in rows] == [m.generate(p, max_new_tokens=6, temperature=0) for p in prompts]
    j = tmp_path / "prompts.jsonl"
    j.write_text(json.dumps({"prompt": "Hello", "max_new_tokens": 3, "seed": 4, "n": 2}) + "\n" +
                 json.dumps("Bye") + "\n")
    r = run("generate", "-m", tiny_dir, "-f", j, "-n", 5)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(x["index"], x["sample"], len(x["tokens"])) for x in rows] == [(0, 0, 3), (0, 1, 3), (1, 0, 5)]
    assert [x["text"] for x in rows[:2]] == m.generate("Hello", n=2, max_new_tokens=3, seed=4)
    one = tmp_path / "one.txt"
    one.write_text("Hello world\n")
    r = run("generate", "-m", tiny_dir, "-f", one, "-n", 6, "--greedy")
    assert r.stdout == m.generate("Hello world", max_new_tokens=6, temperature=0) + "\n"
    j.write_text("{not json\n")
    r = run("generate", "-m", tiny_dir, "-f", j)
    assert r.returncode == 1 and r.stderr.startswith("tinygpt: error:") and "not JSON" in r.stderr
