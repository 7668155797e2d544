"""`posterkg train / evaluate / recommend` end to end on the planted database, and short real
training runs on ../shared ML-1M (the fixture has no tagged posters: the posterkg model's
knowledge side is the genre fallback)."""

import shutil

import pytest
from click.testing import CliRunner

from gnn_synth import make_db
from torch_threads import one_torch_thread  # noqa: F401
from posterkg.cli import cli
from posterkg.gnn.baselines import MostPop
from posterkg.gnn.evaluate import evaluate_model
from posterkg.gnn.inputs import assemble
from posterkg.gnn.train import TrainConfig, train
from posterkg.store import open_store


@pytest.fixture(scope="module")
def synth_db(tmp_path_factory):
    return make_db(tmp_path_factory.mktemp("synth") / "s.duckdb")


def test_cli_train_evaluate_recommend(synth_db, tmp_path):
    db = tmp_path / "cli.duckdb"
    shutil.copy(synth_db, db)
    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text(f'db = "{db}"\n[gnn]\ndim = 16\nbatch_size = 256\nlr = 0.02\nthreads = 1\n')
    run = CliRunner().invoke
    for kind in ("lightgcn", "posterkg"):
        r = run(cli, ["train", "--config", str(cfgfile), "--model", kind, "--epochs", "2"])
        assert r.exit_code == 0, r.output
        assert f"{kind}-seed0" in r.output
    r = run(cli, ["evaluate", "--config", str(cfgfile)])
    assert r.exit_code == 0, r.output
    assert "ndcg@20" in r.output
    out = tmp_path / "recs.tsv"
    r = run(cli, ["recommend", "--config", str(cfgfile), "--all", "-k", "5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == ["user_id", "movie_id", "rank", "score"]
    with open_store(db, read_only=True) as s:
        n_users = s.scalar("SELECT count(DISTINCT user_id) FROM split")
        assert s.count("recommendations") == len(lines) - 1 == 5 * n_users
        # the newest model (posterkg) made them; none is a movie the user rated in train or valid
        seen = s.scalar("SELECT count(*) FROM recommendations r JOIN split USING (user_id, movie_id) "
                        "WHERE part <> 'test'")
        assert seen == 0
    r = run(cli, ["recommend", "--config", str(cfgfile), "--user", "1", "-k", "3"])
    assert r.exit_code == 0 and "user 1" in r.output


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lightgcn", "posterkg"])
def test_real_training_beats_mostpop(ml1m_db_copy, kind):
    """A short real run on ../shared ML-1M (temporal split): the loss falls and test NDCG@20 under
    the full protocol beats MostPop's by a clear margin."""
    with open_store(ml1m_db_copy, read_only=True) as store:
        inputs = assemble(store).inputs
    assert "has" not in inputs.graph and "genre" in inputs.graph   # the genre fallback
    data = inputs.data
    pop = evaluate_model(MostPop(inputs), data, "test")
    # big BPR batches (8 full-graph steps per epoch) keep this around a minute on 2 cores
    cfg = TrainConfig(model=kind, dim=64, epochs=6, lr=0.05, batch_size=32768, patience=6, threads=1)
    res = train(inputs, cfg)
    assert res.history[-1]["bpr"] < res.history[0]["bpr"]
    got = evaluate_model(res.model, data, "test")
    assert got["ndcg@20"] > pop["ndcg@20"] * 1.05, (got, pop)


def test_cli_train_refit_stores_the_model_trained_on_train_and_valid(synth_db, tmp_path):
    db = tmp_path / "refit.duckdb"
    shutil.copy(synth_db, db)
    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text(f'db = "{db}"\n[gnn]\nthreads = 1\n')
    r = CliRunner().invoke(cli, ["train", "--config", str(cfgfile), "--model", "mostpop", "--refit"])
    assert r.exit_code == 0, r.output
    assert "refit on train + valid" in r.output
    from posterkg.gnn.api import load_model

    with open_store(db, read_only=True) as s:
        tm = load_model(s, "mostpop-seed0")
        # the stored popularity counts the valid positives too (by SQL, independently of the model)
        want = dict(s.execute("SELECT movie_id, count(*) FROM split JOIN ratings USING (user_id, movie_id) "
                              "WHERE part IN ('train', 'valid') AND rating >= 4 GROUP BY movie_id").fetchall())
    pop = tm.model.pop.numpy()
    got = {int(m): float(pop[i]) for i, m in enumerate(tm.ids.movie_ids) if pop[i] > 0}
    assert got == {int(k): float(v) for k, v in want.items()}


def test_cli_train_continue_epochs_and_refit_replaces_a_configured_continue_rule(synth_db, tmp_path):
    db = tmp_path / "cont.duckdb"
    shutil.copy(synth_db, db)
    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text(f'db = "{db}"\n[gnn]\nthreads = 1\ncontinue_epochs = 4\n')
    r = CliRunner().invoke(cli, ["train", "--config", str(cfgfile), "--model", "mostpop"])
    assert r.exit_code == 0, r.output
    assert "then 4 on train + valid" in r.output
    # --refit on the command line replaces the configured continue rule (the two exclude each other)
    r = CliRunner().invoke(cli, ["train", "--config", str(cfgfile), "--model", "mostpop", "--refit", "--id", "r"])
    assert r.exit_code == 0, r.output
    assert "refit on train + valid" in r.output and "then 4" not in r.output
    r = CliRunner().invoke(cli, ["train", "--config", str(cfgfile), "--model", "mostpop", "--continue-epochs", "0",
                                 "--id", "f"])
    assert r.exit_code == 0, r.output
    assert "train + valid" not in r.output
    r = CliRunner().invoke(cli, ["train", "--config", str(cfgfile), "--model", "mostpop", "--refit",
                                 "--continue-epochs", "2"])
    assert r.exit_code != 0 and "set one" in str(r.exception)     # the CLI's entry point prints it as one line
