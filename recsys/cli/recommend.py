"""``recsys-recommend``: top-k recommendations from an exported artifact, from the shell.

    recsys-recommend artifacts/mf --user 42 -k 10
    recsys-recommend artifacts/sasrec --items 1,5,9 -k 10
    recsys-recommend artifacts/mf --input users.csv --output recs.csv -k 20
    recsys-recommend artifacts/mf --user 999999 --fallback popular
    recsys-recommend artifacts/mf --similar 50 -k 10      # "goes well with", with titles

Artifacts of models trained with attributes (``model.features``) also answer for a new product,
``--item-attributes '{"genre": ["Drama"], "brand": "acme"}'`` (repeatable; named new1, new2, ...
in the output): alone, the k users it suits best; with ``--similar-items``, the catalogue items
nearest to it; with ``--user``/``--input``/``--history``/``--attributes``, it joins their
rankings. A new customer: ``--history 1,5,9`` (models that score a history) and/or
``--attributes '{"age": "25-34"}'`` (models with user attributes). A value outside the training
vocabulary counts as unknown; an attribute the artifact does not have is an error naming it.

    recsys-recommend artifacts/sasrec --item-attributes '{"attribute": ["12", "40"]}' -k 20
    recsys-recommend artifacts/sasrec --item-attributes '{"attribute": ["12"]}' --similar-items
    recsys-recommend artifacts/mf --attributes '{"gender": "F", "age": "25-34"}' -k 10

``--input`` is a UTF-8 CSV with a ``user`` column (or one id per line without a header);
``--output`` gets one row per recommendation: ``user,rank,item,score``, written atomically.
Unknown ids are an error unless ``--fallback popular`` answers them with the most popular items.
Every bad input is one line on stderr and exit status 2. A line on stderr says whether the
artifact's signature was verified (``$RECSYS_ARTIFACT_KEY``). The default backend runs no code
from the artifact; ``--backend torchscript`` runs its TorchScript scorer (code stored in the
file): only for artifacts you trust. Imports neither Hydra nor Lightning.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from recsys.cli import EXIT_USER_ERROR, Parser
from recsys.errors import RecsysError


def _print(rec: dict, label: str) -> None:
    note = "  (popularity fallback)" if rec.get("fallback") else ""
    print(f"{label}{note}")
    for rank, (item, score) in enumerate(zip(rec["items"], rec["scores"], strict=False), 1):
        print(f"{rank:4d}  {item}  {score:.6g}")


def _print_similar(rows: list[dict]) -> None:
    for r in rows:
        name = r["title"]
        print(f"similar to {r['item']}{f' ({name})' if name else ''}  [{r['method']}]")
        cells = zip(r["items"], r["scores"], r["titles"], strict=False)
        for rank, (item, score, title) in enumerate(cells, 1):
            print(f"{rank:4d}  {item}  {score:.4f}  {title}".rstrip())


def _print_users(rows: list[dict]) -> None:
    for r in rows:
        print(f"users for {r['item']}")
        for rank, (user, score) in enumerate(zip(r["users"], r["scores"], strict=False), 1):
            print(f"{rank:4d}  {user}  {score:.6g}")


def main(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="recsys-recommend",
        description=__doc__.split("\n\n")[0],
        epilog="One of --user, --history, --input, --similar, --attributes or --item-attributes "
        "is needed; --attributes may come with --history, --item-attributes with any of them "
        "but --similar.",
    )
    parser.add_argument("artifact", help="artifact directory written by recsys-export")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--user", action="append", help="external user id (repeatable)")
    what.add_argument(
        "--history", "--items", dest="items", metavar="IDS",
        help="comma-separated external item ids: a new customer's history, oldest first",
    )  # fmt: skip
    what.add_argument("--input", type=Path, help="CSV of users (column 'user', or one id per line)")
    what.add_argument(
        "--similar",
        help="comma-separated external item ids: print the k most similar items of each, with titles",
    )
    parser.add_argument(
        "--attributes", metavar="JSON",
        help='a new customer\'s attributes, a JSON object (\'{"age": "25-34"}\'); models with '
        "user attributes; with --history, the history's items are left out",
    )  # fmt: skip
    parser.add_argument(
        "--item-attributes", action="append", metavar="JSON",
        help="a new product's attributes, a JSON object (repeatable; named new1, new2, ...): "
        "alone its k best-suited users, with --similar-items its nearest catalogue items, with "
        "users or a new customer it joins their rankings; models with item attributes",
    )  # fmt: skip
    parser.add_argument(
        "--similar-items", action="store_true",
        help="with --item-attributes alone: the catalogue items nearest to each new product",
    )  # fmt: skip
    parser.add_argument(
        "-k", type=int, default=10,
        help="items per answer (users, for a new product alone) (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--output",
        type=Path,
        help="CSV to write (user,rank,item,score; --similar/--similar-items: "
        "item,rank,similar_item,score,title; a new product's users: item,rank,user,score); "
        "default: print",
    )
    parser.add_argument(
        "--include-seen", action="store_true", help="do not exclude items already seen"
    )
    parser.add_argument(
        "--fallback", choices=["popular"], help="answer unknown ids with the most popular items"
    )
    parser.add_argument(
        "--backend", default="auto", choices=["auto", "eager", "onnx", "torchscript"],
        help="auto (= eager): rebuild the model, run no code from the artifact; onnx; "
        "torchscript: runs code stored in the artifact, only for artifacts you trust",
    )  # fmt: skip
    parser.add_argument(
        "--trust", action="append", default=[], metavar="PKG",
        help="a package (besides recsys) whose model classes the artifact may name (repeatable "
        "or comma-separated; also $RECSYS_TRUSTED_PACKAGES)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=1024, help="users per batch with --input")
    parser.add_argument(
        "--method", default="auto", choices=["auto", "embedding", "cooccurrence"],
        help="--similar: item embeddings (cosine) or co-occurrence (default: embeddings if any)",
    )  # fmt: skip
    parser.add_argument(
        "--data-root", help="--similar, --similar-items: data root holding the item metadata file"
    )
    args = parser.parse_args(argv)

    try:
        _run(args)
    except RecsysError as e:
        _fail(str(e))
    except OSError as e:  # a file that vanished or cannot be read mid-way
        if isinstance(e, BrokenPipeError):  # `recsys-recommend ... | head`: the reader left
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        where = f"{e.filename}: " if e.filename else ""
        _fail(f"{where}{e.strerror or e}")


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _new_customer(args: argparse.Namespace) -> str:
    given = [f"history {args.items}"] if args.items is not None else []
    return "new customer: " + ", ".join([*given, *(["attributes"] if args.attributes else [])])


def _check_combination(args: argparse.Namespace, attributes, new_items) -> None:
    """The flags that go together (argparse checks only the mutually exclusive ones)."""
    if not (args.user or args.items or args.input or args.similar or attributes or new_items):
        if attributes is not None:  # an empty object: a customer with nothing known
            return
        raise RecsysError(
            "give one of --user, --history, --input, --similar, --attributes or --item-attributes"
        )
    if attributes is not None and (args.user or args.input or args.similar):
        raise RecsysError("--attributes describes a new customer: use it alone or with --history")
    if new_items and args.similar:
        raise RecsysError(
            "--similar takes catalogue item ids; for a new product use --item-attributes with "
            "--similar-items"
        )
    if args.similar_items and (not new_items or args.user or args.input or args.items):
        raise RecsysError("--similar-items goes with --item-attributes alone")
    if args.similar_items and attributes is not None:
        raise RecsysError("--similar-items goes with --item-attributes alone")


def _run(args: argparse.Namespace) -> None:
    """Check every input that needs no artifact, load it, answer; the signature line last (on
    stderr: an error stays the only line there)."""
    from recsys.serving import batch
    from recsys.serving.artifact import load, signature_note

    if args.k < 1:
        raise RecsysError(f"-k must be a positive integer, got {args.k}")
    if args.batch_size < 1:
        raise RecsysError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.output is not None:
        batch.check_output(args.output)
    attributes = (
        batch.parse_attributes(args.attributes, "--attributes")
        if args.attributes is not None
        else None
    )
    new = [batch.parse_attributes(a, "--item-attributes") for a in args.item_attributes or []]
    new_items = dict(zip(batch.new_item_names(len(new)), new, strict=True)) or None
    _check_combination(args, attributes, new_items)
    users = batch.read_users(args.input) if args.input is not None else args.user
    history = batch.parse_ids(args.items, "--history/--items") if args.items is not None else None
    similar_to = batch.parse_ids(args.similar, "--similar") if args.similar is not None else None
    trust = [p for t in args.trust for p in t.split(",")]
    rec = load(args.artifact, backend=args.backend, trust=trust)
    exclude = not args.include_seen
    if rec.features is not None:  # bad attributes named by their flag, before any scoring
        for entity, rows, flag in (
            ("user", [attributes] if attributes else [], "--attributes"),
            ("item", new, "--item-attributes"),
        ):
            if rows and rec.features.names(entity):
                rec.features.encode(entity, rows, flag)
    if new_items is not None and not (users or history or attributes is not None):
        if args.similar_items:
            similar = batch.similar_new_with_titles(rec, new_items, args.k, args.data_root)
            if args.output:
                batch.write_similar(similar, args.output)
                print(f"wrote similar items of {len(similar)} new item(s) to {args.output}")
            else:
                _print_similar(similar)
        else:
            audience = [{"item": n, **rec.top_users(a, k=args.k)} for n, a in new_items.items()]
            if args.output:
                n = batch.write_top_users(audience, args.output)
                print(f"wrote {n} users for {len(audience)} new item(s) to {args.output}")
            else:
                _print_users(audience)
    elif similar_to is not None:
        similar = batch.similar_with_titles(rec, similar_to, args.k, args.method, args.data_root)
        if args.output:
            batch.write_similar(similar, args.output)
            print(f"wrote similar items of {len(similar)} item(s) to {args.output}")
        else:
            _print_similar(similar)
    else:
        if history is not None or attributes is not None:
            row = rec.recommend(
                k=args.k,
                exclude_seen=exclude,
                fallback=args.fallback,
                history=history,
                attributes=attributes,
                new_items=new_items,
            )[0]
            out = [{**row, "user": ""}]
        else:
            out = batch.recommend_users(
                rec, users, args.k, exclude, args.fallback, args.batch_size, new_items
            )
        if args.output:
            n = batch.write_recommendations(out, args.output)
            print(f"wrote {n} recommendations for {len(out)} row(s) to {args.output}")
        else:
            for r in out:
                _print(r, f"user {r['user']}" if users else _new_customer(args))
    sys.stdout.flush()  # a closed pipe shows here, inside the error handling
    print(f"artifact {args.artifact}: {signature_note(rec.signature)}", file=sys.stderr)


if __name__ == "__main__":
    main()
