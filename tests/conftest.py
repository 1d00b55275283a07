"""Shared fixtures. Everything runs on CPU, offline, with tiny models."""
import os

# Read by huggingface_hub / transformers at import time: never touch the network in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP's spinning threads cost ~8x.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ghn_():
    """A fresh tiny GHN per test module, built without touching the global RNG stream."""
    from ghn import GHN, GHNConfig
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GHN(GHNConfig.preset("tiny")).eval()


@pytest.fixture(scope="session")
def tiny_ghn():
    from ghn import GHN, GHNConfig
    torch.manual_seed(0)
    return GHN(GHNConfig.preset("tiny")).eval()


def run_cli(argv, capsys):
    """``ghn-predict`` in-process: ``(exit code, stdout, stderr)`` (argparse errors exit via SystemExit)."""
    from ghn.cli import main
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def tiny_gpt2():
    from transformers import AutoModelForCausalLM, GPT2Config
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128, n_positions=32, bos_token_id=0, eos_token_id=0)
    return AutoModelForCausalLM.from_config(cfg)


def tiny_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg)


def tiny_bert():
    from transformers import AutoModel, BertConfig
    cfg = BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=128,
                     max_position_embeddings=32)
    return AutoModel.from_config(cfg)


@pytest.fixture(scope="session")
def ghn_dir(tmp_path_factory):
    """A tiny GHN saved with save_pretrained (seeded; the global RNG stream is left alone)."""
    from ghn import GHN, GHNConfig
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ghn = GHN(GHNConfig.preset("tiny"))
    d = tmp_path_factory.mktemp("ghn")
    ghn.save_pretrained(d)
    return d
