"""`jaxembed encode`: embed a JSONL file of texts into a .npy file."""

from __future__ import annotations

import argparse

from jaxembed.cli.common import parse_mesh


def add_parser(sub: argparse._SubParsersAction) -> None:
    enc = sub.add_parser("encode", help="embed a JSONL file of {'text': ...} lines")
    enc.add_argument("--model", required=True, help="local HF directory (llama/mistral/qwen2)")
    enc.add_argument("--input", required=True, help="JSONL, one {'text': str} per line")
    enc.add_argument("--output", required=True, help=".npy file of float32 embeddings")
    enc.add_argument("--instruction", default=None, help="query task; adds the Instruct prefix")
    enc.add_argument("--batch-size", type=int, default=32)
    enc.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per text (default: the model's max_seq_length, else 512)",
    )
    enc.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: float32)")
    enc.add_argument("--mesh", type=parse_mesh, default=(-1, 1, 1), help="DATA,FSDP,TENSOR")
    enc.add_argument("--quiet", action="store_true", help="no progress bar")
    enc.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import numpy as np

    from jaxembed.data.formats import read_text_column
    from jaxembed.io_utils import atomic_file, check_output_directories
    from jaxembed.models.encoder import Encoder
    from jaxembed.sharding import make_mesh

    check_output_directories(args.output)
    texts = read_text_column(args.input)
    mesh = make_mesh(args.mesh)
    encoder = Encoder.from_pretrained(args.model, mesh=mesh, dtype=args.dtype)
    embeddings = encoder.encode(
        texts,
        instruction=args.instruction,
        batch_size=args.batch_size,
        max_length=args.max_length,
        show_progress=not args.quiet,
    )
    with atomic_file(args.output) as tmp, open(tmp, "wb") as f:
        np.save(f, embeddings.astype(np.float32))
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {args.output}")
