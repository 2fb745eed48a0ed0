"""Config: every value type-checked on load; what the secure-aggregation protocol will check, checked at load."""

import math
import tomllib

import pytest

from privfed.cli import main
from privfed.config import RunConfig, SecAggConfig, sites_per_round
from privfed.errors import ConfigError

# (raw config, key named in the error, expected type named, value named)
WRONG_TYPES = [
    ({"fed": {"clients": 2.5}}, "fed.clients", "int", "2.5"),
    ({"fed": {"rounds": True}}, "fed.rounds", "int", "True"),           # a bool is not an int
    ({"fed": {"clients": "10"}}, "fed.clients", "int", "'10'"),
    ({"dp": {"allow_large_delta": "yes"}}, "dp.allow_large_delta", "bool", "'yes'"),
    ({"dp": {"secure_rng": 1}}, "dp.secure_rng", "bool", "1"),          # an int is not a bool
    ({"fed": {"lr": "fast"}}, "fed.lr", "float", "'fast'"),
    ({"fed": {"fraction": False}}, "fed.fraction", "float", "False"),
    ({"dp": {"target_epsilon": "8"}}, "dp.target_epsilon", "float", "'8'"),
    ({"data": {"alpha": math.nan}}, "data.alpha", "finite float", "nan"),
    ({"dp": {"delta": math.inf}}, "dp.delta", "finite float", "inf"),
    ({"data": {"path": 3}}, "data.path", "str", "3"),
    ({"data": {"image_size": 28.0}}, "data.image_size", "int", "28.0"),
    ({"seed": "0"}, "seed", "int", "'0'"),
    ({"device": 0}, "device", "str", "0"),
    ({"secure_agg": {"max_colluders": 1.0}}, "secure_agg.max_colluders", "int", "1.0"),
    ({"secure_agg": {"seeded_rounding": "false"}}, "secure_agg.seeded_rounding", "bool", "'false'"),
    ({"model": {"attention": 0}}, "model.attention", "bool", "0"),
    ({"fed": {"clients": [10]}}, "fed.clients", "int", "[10]"),
]


@pytest.mark.parametrize("raw,key,expected,value", WRONG_TYPES)
def test_wrong_type_names_key_expected_type_and_value(raw, key, expected, value):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(raw)
    msg = str(e.value)
    assert f"config key {key} expects" in msg and expected in msg and value in msg, msg


def test_wrong_type_on_direct_construction():
    from privfed.config import FedConfig
    with pytest.raises(ConfigError, match="fed.clients expects int"):
        FedConfig(clients=2.5)


def test_section_must_be_its_dataclass_on_direct_construction():
    with pytest.raises(ConfigError, match=r"config key fed expects a table \(FedConfig\); got dict"):
        RunConfig(fed={"clients": 3})


def test_floats_accept_ints_and_store_floats():
    cfg = RunConfig.from_dict({"fed": {"lr": 1, "fraction": 1}, "dp": {"target_epsilon": 8}})
    assert cfg.fed.lr == 1.0 and isinstance(cfg.fed.lr, float)
    assert isinstance(cfg.fed.fraction, float) and isinstance(cfg.dp.target_epsilon, float)
    assert "lr = 1.0" in cfg.to_toml()


def test_optional_fields_accept_none():
    cfg = RunConfig.from_dict({"dp": {"target_epsilon": None, "noise_multiplier": 1.0}})
    assert cfg.dp.target_epsilon is None


@pytest.mark.parametrize("raw,match", [
    ({"fed": {"clientz": 3}}, r"unknown config key fed.clientz = 3; known in \[fed\]: .*clients"),
    ({"fedd": {"clients": 3}}, r"unknown config section or key fedd = \{'clients': 3\}"),
    ({"colour": "blue"}, r"unknown config section or key colour = 'blue'"),
    ({"fed": 3}, r"config key fed expects a table \(\[fed\]\); got int 3"),
])
def test_unknown_keys_and_sections(raw, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(raw)


def test_wrong_type_in_toml_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[fed]\nclients = 2.5\n')
    with pytest.raises(ConfigError, match="fed.clients expects int; got float 2.5"):
        RunConfig.from_toml(p)


def test_default_config_valid_and_round_trips(tmp_path):
    cfg = RunConfig()
    assert cfg.secure_agg == SecAggConfig(max_colluders=0, failure_log2=40, min_clients=3, seeded_rounding=False,
                                          clip_range=8.0)
    p = tmp_path / "c.toml"
    p.write_text(cfg.to_toml())
    assert RunConfig.from_toml(p) == cfg


# --- defaults chosen by placement ---------------------------------------------------------------------------------

def _schedule(cfg):
    return (cfg.dp.effective_placement, cfg.fed.rounds, cfg.fed.batch_size, cfg.fed.lr, cfg.secure_agg.clip_range,
            cfg.dp.public_subspace, cfg.model.pretrain_batch_size)


def test_default_run_is_distributed_dp_sgd_with_its_schedule():
    # the default: DP-SGD with SecAgg+ over every site every round, so the noise goes in as distributed shares
    assert _schedule(RunConfig()) == ("distributed", 30, 512, 5e-4, 8.0, 512, 64)
    assert RunConfig().dp.public_subspace_shrink is True
    # the explicit spelling of the measured recipe (examples/sweeps/public_subspace_shrink.toml, k = 512 shrunk) is
    # the same run
    assert RunConfig() == RunConfig.from_dict({
        "model": {"pretrain_batch_size": 64},
        "fed": {"rounds": 30, "batch_size": 512, "lr": 0.0005, "min_timestep": 200},
        "dp": {"mode": "sample", "placement": "distributed", "public_subspace": 512, "public_subspace_shrink": True},
        "secure_agg": {"mode": "secagg+", "clip_range": 8.0}})


@pytest.mark.parametrize("raw, k, shrink", [
    # the default subspace is shrunk; with few public images it takes them all (at least 64 are needed)
    ({}, 512, True),
    ({"model": {"pretrain_set_size": 100}}, 100, True),
    ({"model": {"pretrain_set_size": 63}}, 0, False),
    # a k the user names keeps the plain projection unless shrinking is asked for: config.toml files written before
    # the shrinkage existed name k = 64 without it and must read as the run they were (the earlier default)
    ({"dp": {"public_subspace": 64}}, 64, False),
    ({"dp": {"public_subspace": 256, "public_subspace_shrink": True}}, 256, True),
    ({"dp": {"public_subspace_shrink": False}}, 512, False),
    # no projection, nothing to shrink
    ({"dp": {"public_subspace": 0}}, 0, False),
    ({"dp": {"mode": "off"}}, 0, False),
    ({"dp": {"placement": "local"}}, 0, False),
])
def test_default_subspace_and_its_shrinkage(raw, k, shrink):
    cfg = RunConfig.from_dict(raw)
    assert (cfg.dp.public_subspace, cfg.dp.public_subspace_shrink) == (k, shrink)
    # what config.toml holds reads back as the same run
    assert RunConfig.from_dict(tomllib.loads(cfg.to_toml())) == cfg


@pytest.mark.parametrize("raw, t_min", [
    # the default projection trains the sites on t >= T / 5 (T = 1000 here)
    ({}, 200),
    ({"model": {"num_train_timesteps": 100}}, 20),
    ({"model": {"pretrain_set_size": 100}}, 200),
    # a k the user names, as every config.toml written before this key existed does, trains on all timesteps
    ({"dp": {"public_subspace": 512, "public_subspace_shrink": True}}, 0),
    ({"dp": {"public_subspace": 0}}, 0),
    # nothing projected: all timesteps
    ({"dp": {"mode": "off"}}, 0),
    ({"dp": {"placement": "local"}}, 0),
    ({"secure_agg": {"mode": "off"}}, 0),
    ({"data": {"dataset": "npz", "path": "x.npz"}, "dp": {"placement": "distributed"}}, 0),
    # named, it wins everywhere
    ({"fed": {"min_timestep": 0}}, 0),
    ({"dp": {"mode": "off"}, "fed": {"min_timestep": 300}}, 300),
])
def test_min_timestep_follows_the_default_projection(raw, t_min):
    cfg = RunConfig.from_dict(raw)
    assert cfg.fed.min_timestep == t_min
    assert RunConfig.from_dict(tomllib.loads(cfg.to_toml())) == cfg
    # from the defaults, an override re-chooses it (privfed run --dp off trains on every timestep)
    if not raw:
        assert cfg.replace(dp={"mode": "off"}).fed.min_timestep == 0


@pytest.mark.parametrize("raw, match", [
    ({"fed": {"min_timestep": -1}}, "min_timestep must be >= 0"),
    ({"fed": {"min_timestep": 1000}}, "leaves no timestep to train on"),
    ({"fed": {"min_timestep": 50}, "model": {"num_train_timesteps": 50}}, "leaves no timestep to train on"),
])
def test_min_timestep_out_of_range(raw, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(raw)


@pytest.mark.parametrize("raw, expected", [
    # no pairwise masks to carry noise shares: each site adds its own noise, on the local schedule
    ({"secure_agg": {"mode": "off"}}, ("local", 15, 64, 2e-3, 0.25, 0, 64)),
    ({"secure_agg": {"mode": "ckks"}}, ("local", 15, 64, 2e-3, 0.25, 0, 64)),
    # a sampled subset of sites each round: who takes part is visible, so distributed is not chosen
    ({"fed": {"fraction": 0.5}}, ("local", 15, 64, 2e-3, 0.25, 0, 64)),
    ({"dp": {"mode": "client"}}, ("server", 15, 64, 2e-3, 0.25, 0, 64)),
    ({"dp": {"mode": "off"}}, ("none", 15, 64, 2e-3, 0.25, 0, 64)),
    # no public images (pneumonia): no projection, and there local DP-SGD measured better (and trusts no one)
    ({"data": {"dataset": "npz", "path": "x.npz"}}, ("local", 15, 64, 2e-3, 0.25, 0, 64)),
    ({"model": {"public_pretrain": "none"}}, ("local", 15, 64, 2e-3, 0.25, 0, 64)),
    # asked for, distributed runs without public images too, on its own schedule
    ({"data": {"dataset": "npz", "path": "x.npz"}, "dp": {"placement": "distributed"}},
     ("distributed", 30, 512, 5e-4, 8.0, 0, 64)),
    # explicit keys win over the schedule; an explicit site batch also sets the public pretraining batch (as before)
    ({"dp": {"placement": "local"}, "fed": {"rounds": 4}}, ("local", 4, 64, 2e-3, 0.25, 0, 64)),
    ({"fed": {"batch_size": 128, "lr": 1e-3}}, ("distributed", 30, 128, 1e-3, 8.0, 512, 128)),
    ({"dp": {"public_subspace": 0}, "secure_agg": {"clip_range": 4.0}}, ("distributed", 30, 512, 5e-4, 4.0, 0, 64)),
])
def test_unset_keys_follow_the_placement(raw, expected):
    assert _schedule(RunConfig.from_dict(raw)) == expected


def test_auto_placement_keeps_its_earlier_meaning():
    # config.toml files written before placement could be unset say "auto" and mean local DP-SGD: they must read
    # the same now (an auditor re-reading an old run)
    old = RunConfig.from_dict({"fed": {"rounds": 15, "batch_size": 64, "lr": 2e-3}, "dp": {"placement": "auto"},
                               "secure_agg": {"clip_range": 0.25}, "model": {"pretrain_batch_size": 64}})
    assert _schedule(old) == ("local", 15, 64, 2e-3, 0.25, 0, 64)


def test_written_config_is_explicit_and_replace_rechooses_unset_keys(tmp_path):
    cfg = RunConfig()
    written = tomllib.loads(cfg.to_toml())
    assert written["dp"]["placement"] == "distributed" and written["fed"]["batch_size"] == 512
    # re-read from the run directory, every key is explicit: an override keeps the run's schedule
    reread = RunConfig.from_dict(written)
    assert _schedule(reread.replace(secure_agg={"max_colluders": 1})) == _schedule(cfg)
    # from the defaults, an override re-chooses what was unset (CLI: privfed run --secure-agg off)
    assert _schedule(cfg.replace(secure_agg={"mode": "off"})) == ("local", 15, 64, 2e-3, 0.25, 0, 64)
    assert _schedule(cfg.replace(fed={"rounds": 5})) == ("distributed", 5, 512, 5e-4, 8.0, 512, 64)
    with pytest.raises(ConfigError, match="placement 'distributed' needs pairwise-mask"):
        reread.replace(secure_agg={"mode": "off"})


# --- what the protocol checks, checked at load -------------------------------------------------------------------

def _sec(clients=10, fraction=1.0, **sec):
    return RunConfig.from_dict({"fed": {"clients": clients, "fraction": fraction},
                                "secure_agg": {"mode": "secagg+", **sec}})


def test_threshold_fraction_one_fails_at_load():
    with pytest.raises(ConfigError, match="threshold_fraction must be in"):
        _sec(threshold_fraction=1.0)


@pytest.mark.parametrize("n", [2, 3, 4, 9, 10, 11])
def test_t_over_half_boundary(n):
    # threshold_fraction 0.5 gives t = floor(n/2) + 1 > n/2: accepted; just below gives t <= n/2 for even n
    assert _sec(clients=n, min_clients=2, threshold_fraction=0.5).secure_agg.threshold(n) * 2 > n
    with pytest.raises(ConfigError, match="threshold_fraction must be in"):
        _sec(clients=n, min_clients=2, threshold_fraction=0.49)


def test_round_of_one_site_fails():
    # 10 clients at fraction 0.1 -> 1 site per round: t = 1, no secure sum
    with pytest.raises(ConfigError, match="n=1"):
        _sec(fraction=0.1, min_clients=2)


def test_colluder_bound_both_sides():
    # n = 10, threshold_fraction 0.67 -> t = 7; t >= floor((n + n_C)/2) + 1 holds for n_C <= 3, fails for n_C = 4
    assert _sec(max_colluders=3).secure_agg.threshold(10) == 7
    with pytest.raises(ConfigError, match=r"max_colluders=4.*floor\(\(n \+ n_C\)/2\) \+ 1 = 8"):
        _sec(max_colluders=4)
    # raising the threshold restores it: 0.75 -> t = 8
    assert _sec(max_colluders=4, threshold_fraction=0.75).secure_agg.threshold(10) == 8


def test_colluder_bound_uses_sites_per_round():
    # 20 clients at fraction 0.5 -> n = 10 per round (the runner's rounding); the bound is checked for n = 10
    cfg = _sec(clients=20, fraction=0.5, max_colluders=3)
    assert sites_per_round(cfg.fed) == 10
    with pytest.raises(ConfigError, match="n=10"):
        _sec(clients=20, fraction=0.5, max_colluders=4)
    # 0.55 * 10 = 5.5 -> round() gives 6 (banker's rounding as the runner does), t = floor(0.67 * 6) + 1 = 5
    assert sites_per_round(_sec(clients=10, fraction=0.55).fed) == 6


def test_impossible_colluder_count_says_so():
    assert _sec(max_colluders=9, threshold_fraction=0.99).secure_agg.threshold(10) == 10    # t = n
    with pytest.raises(ConfigError, match="at most 9 colluders"):
        _sec(max_colluders=10, threshold_fraction=0.99)


def test_round_below_site_minimum_fails():
    assert sites_per_round(_sec(clients=3).fed) == 3
    with pytest.raises(ConfigError, match="min_clients=4"):
        _sec(clients=3, min_clients=4)
    with pytest.raises(ConfigError, match="min_clients must be >= 2"):
        _sec(min_clients=1)


def test_exact_dropouts_leave_threshold():
    # n = 3, t = 3: the approximate rate rule passes (0.3 <= 0.33) but floor(0.3 * 3) = 0 drop; fine
    assert _sec(clients=3, dropout_rate=0.3).secure_agg.check_round(3) == 3
    with pytest.raises(ConfigError, match="every round would abort"):
        _sec(dropout_rate=0.4)


def test_protocol_checks_skipped_when_secure_agg_off():
    cfg = RunConfig.from_dict({"fed": {"clients": 2}, "secure_agg": {"mode": "off", "max_colluders": 5}})
    assert cfg.secure_agg.mode == "off"


@pytest.mark.parametrize("bad,match", [({"failure_log2": 5}, "failure_log2"), ({"failure_log2": 257}, "failure_log2"),
                                       ({"max_colluders": -1}, "max_colluders")])
def test_new_field_ranges(bad, match):
    with pytest.raises(ConfigError, match=match):
        SecAggConfig(**bad)


def test_threshold_matches_protocol():
    from secure_agg import SecAggParams
    for f in (0.5, 0.51, 0.6, 0.67, 0.75, 0.9, 0.99):
        for n in range(2, 60):
            assert SecAggConfig(threshold_fraction=f).threshold(n) == SecAggParams(threshold_fraction=f).threshold(n)


def test_cli_bad_threshold_fails_before_run_dir(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[secure_agg]\nthreshold_fraction = 1.0\n")
    out = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "threshold_fraction" in err
    assert not out.exists()
