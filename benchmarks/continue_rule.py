"""Valid only: a third test-time rule, *fold-in + continue*: after early stopping, keep training
the same model for a few epochs on train + valid (the valid period's ratings become training
targets as well as history), then score test. Decided as refit_rule.py decides fold-in against
refit: the protocol played one period earlier (inner train / inner valid carved from train, the
real valid part playing test), so test is never read.

    .venv/bin/python benchmarks/continue_rule.py --seed 0 --epochs 6 --lr 0.003 0.001 --out F

For each seed: train on inner train with early stopping on inner valid (the registry's settings,
collaborative part chosen on inner valid), score the real valid part (fold-in), then for each
continuation learning rate continue from that state on inner train + inner valid for ``--epochs``
epochs (fresh Adam, the same weight averaging), scoring the real valid part after every epoch:
the sequence alone and with the collaborative part chosen before (its EASE matrix from inner
train). ``--average`` also scores the mean of the fold-in model and the continued one after
every epoch (a two-member ensemble from one training). Writes the curves to ``--out``.
"""
from __future__ import annotations

import argparse, copy, dataclasses, json, os, sys, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="posterkg-seq")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, nargs="+", default=[0.003])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--config", type=Path, default=HERE.parent / "configs" / "ml1m.toml")
    p.add_argument("--db", type=Path, default=HERE / "results" / "accuracy-ml1m.duckdb")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--on", choices=["train+valid", "train"], default="train+valid",
                   help="what the continuation trains on; 'train' (inner train only, no new targets) is the "
                        "control: it separates the new targets from the extra epochs")
    p.add_argument("--state", type=Path, help="cache of the first (early-stopped) model: loaded if present, "
                                              "else saved there")
    p.add_argument("--average", action="store_true",
                   help="also score, after every continued epoch, the mean of the fold-in model's and the continued "
                        "model's scores (two members for the price of one training: the members rule of the seed "
                        "ensembles, the collaborative part added once)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("POSTERKG_PROGRESS", "0")
    import torch
    from posterkg.config import Config
    from posterkg.gnn import registry
    from posterkg.gnn.evaluate import evaluate
    from posterkg.gnn.inputs import assemble
    from posterkg.gnn.stage import feature_spec, model_configs
    from posterkg.gnn.train import inputs_on, refit_inputs, train
    from posterkg.store import open_store

    cfg = Config.load(args.config)
    tcfg, mcfg = model_configs(cfg, args.model)
    with open_store(args.db, read_only=True) as store:
        inputs = assemble(store, features=feature_spec(mcfg)).inputs
    shifted = inputs_on(inputs, inputs.data.shifted_view())
    data = shifted.data
    tcfg = dataclasses.replace(tcfg, seed=args.seed, threads=args.threads)
    t0 = time.perf_counter()
    if args.state and args.state.is_file():
        saved = torch.load(args.state, weights_only=False)
        m = registry.build(args.model, shifted, registry.stored_model_config(args.model, saved["model_config"]), seed=args.seed)
        m.load_state_dict(saved["state"])
        best_epoch, inner_valid = saved["best_epoch"], saved["inner_valid"]
    else:
        first = train(shifted, tcfg, model_cfg=mcfg, verbose=args.verbose)
        m, best_epoch, inner_valid = first.model, first.best_epoch, first.valid.get("ndcg@20")
        if args.state:
            torch.save({"state": m.state_dict(), "model_config": dataclasses.asdict(m.cfg), "best_epoch": best_epoch,
                        "inner_valid": inner_valid}, args.state)
    w, l2 = float(m.cfg.item_item), float(m.cfg.item_item_l2)

    def score(*models):
        """NDCG@20 on the real valid part of ``models``' mean score (one model: its own), blended
        and with the sequence alone. Each model's score carries the same EASE part, so the mean
        of several is the mean of their sequence scores plus that part once (the members rule)."""
        history = data.history("test")

        def ndcg():
            with torch.no_grad():
                return evaluate(lambda users: sum(x.score(users, history) for x in models) / len(models),
                                data, "test")["ndcg@20"]
        for x in models:
            x.eval()
        blend = ndcg()
        keep = [x.cfg.item_item for x in models]
        for x in models:
            x.cfg.item_item = 0.0
        alone = ndcg()
        for x, k in zip(models, keep):
            x.cfg.item_item = k
        return {"seq": alone, "blend": blend}

    base = None
    if args.average:
        base = registry.build(args.model, shifted, copy.deepcopy(m.refit_config()), seed=args.seed)
        base.load_state_dict(m.state_dict())
    out = {"model": args.model, "seed": args.seed, "protocol": "shifted one period; the real valid part plays test; "
           "test never read", "best_inner_epoch": best_epoch, "inner_valid_ndcg@20": inner_valid, "on": args.on,
           "item_item": w, "item_item_l2": l2, "foldin": score(m), "seconds_first": round(time.perf_counter() - t0, 1),
           "continue": {}}
    print(f"seed {args.seed}: best inner epoch {best_epoch}, fold-in {out['foldin']}", flush=True)
    base_state = copy.deepcopy(m.state_dict())
    for lr in args.lr:
        m.load_state_dict(base_state)
        curve, tick = [], [0]

        def valid_fn(model):
            model.cfg.item_item, model.cfg.item_item_l2 = w, l2
            model.ii_S = base_state["ii_S"]
            curve.append(score(model))
            if base is not None:
                curve[-1]["mean_with_foldin"] = score(base, model)
            print(f"  lr {lr} epoch {len(curve)}: {curve[-1]}", flush=True)
            tick[0] += 1
            return {"ndcg@20": float(tick[0])}           # always 'better': the last state stays
        ccfg = dataclasses.replace(tcfg, epochs=args.epochs, lr=lr, patience=10 ** 9, min_epochs=0,
                                   eval_every=1, eval_from=1)
        train(refit_inputs(shifted) if args.on == "train+valid" else shifted, ccfg, model=m, model_cfg=m.cfg, verbose=args.verbose, valid_fn=valid_fn)
        out["continue"][str(lr)] = curve[:args.epochs]
        args.out.write_text(json.dumps(out, indent=1))
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
