"""Evaluation: deterministic per checkpoint, eval.json contents, Wilson intervals, rollout videos."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import run_expert_eval
from lastr1.commands import eval as eval_command
from lastr1.envs import EnvConfig, make_env
from lastr1.eval.evaluate import evaluate, format_table
from lastr1.eval.stats import mean_ci, wilson_interval
from lastr1.models.decode import DecodeConfig
from lastr1.models.policy import LastR1Policy


def _run_eval(ckpt, out, **kw) -> dict:
    base = dict(
        checkpoint=str(ckpt),
        env=EnvConfig(backend="toy", image_size=32, num_envs=4),
        episodes_per_task=3,
        out=str(out),
        videos_per_task=0,
        progress=False,
    )
    base.update(kw)
    assert eval_command.run(eval_command.Config(**base)) == 0
    return json.loads((out / "eval.json").read_text())


def _strip(result: dict) -> dict:
    """The result without the fields that name output paths."""
    r = {k: v for k, v in result.items() if k != "checkpoint"}
    r["per_task"] = {name: {k: v for k, v in t.items() if k != "video"} for name, t in r["per_task"].items()}
    return r


def _frames(path) -> np.ndarray:
    import imageio.v2 as imageio

    with imageio.get_reader(path) as reader:
        return np.stack([np.asarray(f) for f in reader])


def test_same_checkpoint_same_seed_same_episodes(toy_sft_checkpoint, tmp_path):
    a = _run_eval(toy_sft_checkpoint, tmp_path / "a", seed=3, videos_per_task=1)
    b = _run_eval(toy_sft_checkpoint, tmp_path / "b", seed=3, videos_per_task=1)
    assert _strip(a) == _strip(b)
    for name in ("reach-red", "reach-blue"):
        assert a["per_task"][name]["success_list"] == b["per_task"][name]["success_list"]
        assert len(a["per_task"][name]["success_list"]) == 3
        # the trajectories themselves repeat, frame for frame
        fa, fb = _frames(a["per_task"][name]["video"]), _frames(b["per_task"][name]["video"])
        assert fa.shape == fb.shape and np.array_equal(fa, fb)


def test_sampled_eval_is_reproducible_and_differs_from_greedy(toy_sft_checkpoint):
    """``mode="sample"`` draws from one seeded generator: same seed, same episodes; the draws matter."""
    policy = LastR1Policy.from_pretrained(toy_sft_checkpoint).eval()
    with make_env(EnvConfig(backend="toy", image_size=32, num_envs=2)) as env:
        runs = [evaluate(policy, env, 4, mode="sample", seed=s, progress=False) for s in (5, 5, 6)]
        greedy = evaluate(policy, env, 4, progress=False)
    lists = [[r["per_task"][t]["success_list"] for t in r["per_task"]] for r in runs]
    lats = [r["mean_latent_len"] for r in runs]
    assert lists[0] == lists[1] and lats[0] == lats[1]
    assert runs[0]["mode"] == "sample" and greedy["mode"] == "greedy"
    assert (lists[0], lats[0]) != (lists[2], lats[2])  # another seed, other draws


def test_eval_command_sample_mode_matches_evaluate_and_says_so(toy_sft_checkpoint, tmp_path):
    """``lastr1 eval mode=sample``: the same seeded episodes as ``evaluate(mode="sample")``, labelled."""
    res = _run_eval(toy_sft_checkpoint, tmp_path / "s", mode="sample", seed=5)
    policy = LastR1Policy.from_pretrained(toy_sft_checkpoint).eval()
    with make_env(EnvConfig(backend="toy", image_size=32, num_envs=4)) as env:
        direct = evaluate(policy, env, 3, mode="sample", seed=5, progress=False)
    for name, task in direct["per_task"].items():
        assert res["per_task"][name]["success_list"] == task["success_list"]
    assert res["mean_latent_len"] == direct["mean_latent_len"]
    assert res["mode"] == "sample" and res["protocol"]["mode"] == "sample"
    assert res["protocol"]["actions"].startswith("sampled (action temperature")
    with pytest.raises(ValueError, match="mode='beam'"):
        eval_command.Config(checkpoint=str(toy_sft_checkpoint), mode="beam")
    with pytest.raises(ValueError, match="mode=sample needs a checkpoint policy"):
        eval_command.Config(policy="expert", mode="sample")


def test_eval_json_contents(toy_sft_checkpoint, tmp_path):
    res = _run_eval(toy_sft_checkpoint, tmp_path / "e")  # 6 episodes on 4 envs: the last round is padded
    assert res["checkpoint"] == str(toy_sft_checkpoint) and res["init_set"] == "eval"
    assert set(res["per_task"]) == {"reach-red", "reach-blue"}
    total_k = 0
    for r in res["per_task"].values():
        k, m = r["successes"], r["episodes"]
        assert m == 3 and len(r["success_list"]) == 3 and sum(r["success_list"]) == k
        assert r["success_rate"] == pytest.approx(k / m)
        assert r["ci95"] == pytest.approx(list(wilson_interval(k, m)))
        assert r["ci95"][0] <= r["success_rate"] <= r["ci95"][1]
        assert 2.0 <= r["mean_latent_len"] <= 4.0  # lengths are in {2, 4} (k_max 4, group 2)
        assert 0 < r["mean_env_steps"] <= 25 and r["instruction"].startswith("move the gripper")
        assert r["video"] is None  # videos_per_task=0
        total_k += k
    assert res["episodes"] == 6 and res["successes"] == total_k
    assert res["success_rate"] == pytest.approx(total_k / 6)
    assert res["ci95"] == pytest.approx(list(wilson_interval(total_k, 6)))
    assert 2.0 <= res["mean_latent_len"] <= 4.0
    table = format_table(res)
    assert "reach-red" in table and "reach-blue" in table and "overall" in table


def test_eval_probes_fix_the_reasoning_length_and_the_action_decode(toy_sft_checkpoint, tmp_path):
    for length in (2, 4):
        probe = DecodeConfig(force_latent_len=length, greedy_actions="bin_mean")
        res = _run_eval(toy_sft_checkpoint, tmp_path / f"len{length}", decode=probe)
        assert all(r["mean_latent_len"] == length for r in res["per_task"].values())
        assert res["protocol"]["actions"] == f"greedy (bin_mean), reasoning length fixed at {length}"
        assert res["protocol"]["decode"]["force_latent_len"] == length
    default = _run_eval(toy_sft_checkpoint, tmp_path / "default")
    assert default["protocol"]["actions"] == "greedy (argmax), deterministic stop rule"
    with pytest.raises(ValueError, match="decode.force_latent_len=3 must be 0"):  # before any episode
        _run_eval(toy_sft_checkpoint, tmp_path / "bad", decode=DecodeConfig(force_latent_len=3))
    assert not (tmp_path / "bad").exists()


def test_eval_rejects_more_episodes_than_eval_states(toy_sft_checkpoint):
    policy = LastR1Policy.from_pretrained(toy_sft_checkpoint)
    with make_env(EnvConfig(backend="toy", image_size=32, num_envs=1)) as env:
        with pytest.raises(ValueError, match="has only 50 'eval' initial states"):
            evaluate(policy, env, 51, progress=False)
        with pytest.raises(ValueError, match="must be >= 1"):
            evaluate(policy, env, 0, progress=False)


def _wilson_by_hand(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (0, 10, (0.0, 0.27753)),  # upper = z^2 / (n + z^2)
        (10, 10, (0.72247, 1.0)),
        (5, 10, (0.23659, 0.76341)),
        (1, 10, (0.01787, 0.40415)),
        (45, 50, (0.78640, 0.95653)),
    ],
)
def test_wilson_interval_known_values(k, n, expected):
    lo, hi = wilson_interval(k, n)
    assert (lo, hi) == pytest.approx(expected, abs=1e-4)
    assert (lo, hi) == pytest.approx(_wilson_by_hand(k, n), abs=1e-12)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    # symmetric: k successes <-> n - k failures
    lo2, hi2 = wilson_interval(n - k, n)
    assert (lo, hi) == pytest.approx((1 - hi2, 1 - lo2), abs=1e-12)


def test_wilson_closed_forms_and_edges():
    z2 = 1.96**2
    assert wilson_interval(0, 10)[1] == pytest.approx(z2 / (10 + z2), abs=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no trials: no information
    w20, w200 = wilson_interval(10, 20), wilson_interval(100, 200)
    assert w200[1] - w200[0] < w20[1] - w20[0]  # more trials, narrower


def test_mean_ci():
    m, half = mean_ci([0.5, 0.7, 0.9])
    assert m == pytest.approx(0.7)
    assert half == pytest.approx(1.96 * 0.2 / math.sqrt(3))
    assert mean_ci([0.4])[0] == 0.4 and math.isnan(mean_ci([0.4])[1])
    assert all(math.isnan(v) for v in mean_ci([]))


def test_eval_writes_videos(toy_sft_checkpoint, tmp_path):
    policy = LastR1Policy.from_pretrained(toy_sft_checkpoint)
    with make_env(EnvConfig(backend="toy", image_size=32, num_envs=2, max_steps=10)) as env:
        res = evaluate(policy, env, 2, videos_dir=tmp_path / "videos", videos_per_task=1, progress=False)
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 2  # one per task (episode 0 only)
    for name, r in res["per_task"].items():
        path = tmp_path / "videos" / f"{name}_ep000_{'success' if r['success_list'][0] else 'failure'}.mp4"
        assert r["video"] == str(path) and path.stat().st_size > 0
        frames = _frames(path)
        # reset frame + one per env step, each 32 px frame upscaled to 256 px
        assert frames.shape[1:] == (256, 256, 3)
        if not r["success_list"][0]:
            assert frames.shape[0] == 10 + 1


def test_eval_records_frames_only_for_the_episodes_it_writes(toy_sft_checkpoint, tmp_path, monkeypatch):
    """A frame is a render per control step: rounds without a video episode record none."""
    import lastr1.eval.evaluate as evaluate_module

    asked = []
    real_collect = evaluate_module.collect

    def spy(env, policy, batch, **kw):
        asked.append(([spec.init_index for spec in batch], kw["record_frames"]))
        return real_collect(env, policy, batch, **kw)

    monkeypatch.setattr(evaluate_module, "collect", spy)
    policy = LastR1Policy.from_pretrained(toy_sft_checkpoint)
    with make_env(EnvConfig(backend="toy", image_size=32, num_envs=3, max_steps=5)) as env:
        evaluate(policy, env, 4, videos_dir=tmp_path / "v", videos_per_task=1, progress=False)
    # 2 tasks x 4 episodes in rounds of 3: [0 1 2] [3 0 1] [2 3 pad]; episode 0 of each task is a video
    assert asked == [([0, 1, 2], 1), ([3, 0, 1], 2), ([2, 3, 3], 0)]
    assert len(list((tmp_path / "v").glob("*.mp4"))) == 2


def test_expert_policy_eval_is_deterministic_and_records_the_protocol(tmp_path):
    """`lastr1 eval --policy expert`: the scripted experts through the same evaluator, twice."""

    env = EnvConfig(backend="toy", image_size=16, num_envs=3)
    a, b = (run_expert_eval(env, 4, tmp_path / run) for run in ("a", "b"))
    assert _strip(a) == _strip(b)
    assert a["checkpoint"] is None and a["suite"] == "toy"
    for task in a["per_task"].values():
        assert task["success_list"] == [True] * 4 and task["mean_latent_len"] == 0.0
        assert task["video"] is not None
    proto = a["protocol"]
    assert proto["policy"] == "expert" and proto["trials_per_task"] == 4 and proto["init_set"] == "eval"
    assert proto["max_steps"] == {"reach-red": 25, "reach-blue": 25}
    assert proto["versions"]["numpy"] == np.__version__


def test_eval_policy_choice_errors(tmp_path):
    with pytest.raises(ValueError, match="policy='random'"):
        eval_command.run(eval_command.Config(policy="random", out=str(tmp_path)))
    with pytest.raises(ValueError, match="--policy expert"):
        eval_command.run(eval_command.Config(out=str(tmp_path)))
