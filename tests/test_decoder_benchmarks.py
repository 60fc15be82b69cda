"""The decoder benchmarks (shared prefix speed, memory levers) run end to end on a tiny Llama."""

from conftest import load_benchmark


def test_prefix_speed_harness_on_a_tiny_llama(tiny_models, synth_dir, tmp_path, capsys):
    rows = load_benchmark("prefix_speed").main(["--model", str(tiny_models["llama"]), "--data", str(synth_dir),
                                                "--n", "12", "--few-shot", "0", "2", "--batch", "4",
                                                "--json", str(tmp_path / "r.json")])
    assert [r["few_shot"] for r in rows] == [0, 2] and all(r["n"] == 12 for r in rows)
    for r in rows:
        assert r["off_per_s"] > 0 and r["on_per_s"] > 0 and r["max_abs_diff"] < 1e-4
    assert rows[1]["prefix_share"] > rows[0]["prefix_share"]
    assert "| ratio |" in capsys.readouterr().out
