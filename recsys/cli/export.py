"""``recsys-export``: turn a trained run into a self-contained artifact.

recsys-export run=outputs/<date>/<time>            # or ckpt_path=<checkpoint>

With ``$RECSYS_ARTIFACT_KEY`` set, the artifact is signed (HMAC-SHA256); the last line says so.
A model trained with attributes (``model.features``) gets ``features.json`` (the fields it uses),
so the artifact scores new products and new customers from their attributes.
"""

from __future__ import annotations

from pathlib import Path

from recsys.errors import ConfigError


def _main(cfg) -> None:
    # imported here, not at the top: ``--help``, ``--cfg`` and Hydra's override errors answer
    # without loading torch and Lightning (~8 s of a CLI call's 9)
    from omegaconf import OmegaConf

    from recsys.serving.artifact import KEY_ENV, VERIFIED, read_artifact
    from recsys.serving.export import export
    from recsys.serving.features import FILE as FEATURES
    from recsys.serving.features import read as read_features

    c = OmegaConf.to_container(cfg, resolve=True)
    ckpt, run = c.get("ckpt_path"), c.get("run")
    if bool(ckpt) == bool(run):
        raise ConfigError("give exactly one of ckpt_path=<checkpoint> or run=<run directory>")
    if run:
        run_path = Path(run)
        if not run_path.is_dir():
            raise ConfigError(f"run: no such run directory: {run_path}")
        ckpt = run_path / "checkpoints" / "best.ckpt"
    out = c.get("out") or (Path(ckpt).resolve().parent.parent / "artifact")
    path = export(
        ckpt,
        out,
        data_root=c.get("data_root"),
        rows=int(c.get("rows", 33)),
        torchscript=bool(c.get("torchscript", True)),
        onnx=bool(c.get("onnx", True)),
        pseudonymize_users=bool(c.get("pseudonymize_users", False)),
        pseudonym_key_env=str(c.get("pseudonym_key_env") or "RECSYS_PSEUDONYM_KEY"),
        trust=c.get("trust") or [],
        allow_unfinished=bool(c.get("allow_unfinished")),
    )
    meta, signature = read_artifact(path, verify=False)
    s = meta["scorer"]
    print(f"artifact: {path}")
    print(
        f"  model: {meta['model']['_target_']}  users: {meta['num_users']}  items: {meta['num_items']}"
    )
    print(f"  torchscript: {s['torchscript'] or 'no (' + s.get('torchscript_error', '') + ')'}")
    print(f"  onnx: {s['onnx'] or 'no (' + s.get('onnx_error', '') + ')'}")
    print(
        f"  embeddings: {', '.join(meta['embeddings']) or 'none'}  history input: {meta['supports_history']}"
    )
    if FEATURES in meta["files"]:
        feats = read_features(Path(path) / FEATURES)
        used = [f"{e} {', '.join(feats.names(e))}" for e in ("item", "user") if feats.names(e)]
        print(f"  attributes: {'; '.join(used)} (features.json: new items / customers)")
    if signature == VERIFIED:
        print(f"  signature: signed (HMAC-SHA256, key from {KEY_ENV})")
    else:
        print(f"  signature: none, unsigned (set {KEY_ENV} to sign; checksums and digest only)")


def main() -> None:
    import hydra

    from recsys.cli import CONFIG_DIR, report_errors

    hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")(
        report_errors(_main)
    )()


if __name__ == "__main__":
    main()
