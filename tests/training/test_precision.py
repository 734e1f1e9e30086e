"""--precision auto and the default batch: every path of the decision, capabilities faked."""

import json
import os

import pytest
import torch
from click.testing import CliRunner

from charlm.cli import cli
from charlm.training import precision
from charlm.training.precision import decide

X86 = {"architecture": "x86_64", "avx": True, "avx2": True}
AVX512 = {**X86, "avx512_f": True, "avx512_bw": True, "avx512_vl": True, "avx512_dq": True}
CPUS = {  # what torch.cpu.get_capabilities() reports, reduced to the flags that matter
    "amx": ({**AVX512, "avx512_bf16": True, "amx_bf16": True}, "bf16-mixed", "AMX"),
    "avx512-bf16 only": ({**AVX512, "avx512_bf16": True}, "bf16-mixed", "AVX512-BF16"),
    "avx512 without bf16": (AVX512, "32-true", "emulates bf16"),
    "avx2": (X86, "32-true", "no AVX512-BF16 or AMX"),
}


def never(asked):
    raise AssertionError("a decision the report settles must not be measured")


@pytest.mark.parametrize("kind", sorted(CPUS))
def test_the_cpus_report_decides_where_it_can(kind):
    caps, expected, why = CPUS[kind]
    d = decide("auto", 8, "cpu", measure=never, capabilities=caps)
    assert (d.precision, d.batch_size) == (expected, 8)
    assert why in d.precision_reason and why in d.line()


def test_a_cpu_that_does_not_report_is_measured_and_the_faster_wins():
    arm = {"architecture": "aarch64"}
    rates = {"bf16-mixed": 30_000.0, "32-true": 20_000.0}
    d = decide("auto", 8, "cpu", capabilities=arm,
               measure=lambda asked: [rates[p] for p, _ in asked])
    assert d.precision == "bf16-mixed" and "measured bf16 30,000 against float32 20,000" in \
        d.precision_reason
    rates = {"bf16-mixed": 10_000.0, "32-true": 20_000.0}
    assert decide("auto", 8, "cpu", capabilities=arm,
                  measure=lambda asked: [rates[p] for p, _ in asked]).precision == "32-true"
    # nothing to measure with: the safe float32, said as such
    d = decide("auto", 8, "cpu", capabilities=arm, measure=None)
    assert d.precision == "32-true" and "not measured" in d.precision_reason


@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16-mixed"), ((8, 0), "bf16-mixed"),
                                                  ((7, 5), "32-true"), ((6, 1), "32-true")])
def test_cuda_decides_by_compute_capability(capability, expected):
    d = decide("auto", None, "gpu", cuda_capability=capability, measure=never)
    assert d.precision == expected and f"{capability[0]}.{capability[1]}" in d.precision_reason
    # a GPU run is not timed on the CPU: the batch the precision usually wants
    assert d.batch_size == (16 if expected == "bf16-mixed" else 8)


def test_no_cuda_device_means_float32(monkeypatch):
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    d = decide("auto", 8, "gpu", measure=never)
    assert d.precision == "32-true" and "no CUDA device" in d.precision_reason
    assert decide("auto", 8, "mps", measure=never).precision == "32-true"


def test_a_given_precision_and_batch_pass_through():
    d = decide("16-mixed", 32, "cpu", measure=never, capabilities=CPUS["amx"][0])
    assert (d.precision, d.batch_size, d.precision_reason, d.batch_reason) == \
        ("16-mixed", 32, "given", "batch given")


@pytest.mark.parametrize("gain, batch", [(2.0, 16), (1.7, 16), (1.4, 8), (1.0, 8), (0.7, 8)])
def test_the_default_batch_follows_the_measured_gain(gain, batch):
    rates = {8: 10_000.0, 16: 10_000.0 * gain}
    d = decide("32-true", None, "cpu", measure=lambda asked: [rates[b] for _, b in asked])
    assert d.batch_size == batch and f"{gain:.2f}x" in d.batch_reason


def test_the_timer_measures_once_per_key_and_survives_a_broken_cache(tmp_path):
    from charlm.model import CharRNN, ModelConfig
    builds = []

    def build():
        builds.append(1)
        return CharRNN(ModelConfig(5, "lstm", 8, 1, 4))

    cache = tmp_path / "machine.json"
    timer = precision.step_timer(build, 5, 8, cache, {"cpu": "test"}, budget_s=0.2)
    small, large = timer([("32-true", 2), ("32-true", 4)])
    assert small > 0 and large > 0 and len(builds) == 2  # one model per setting, side by side
    assert timer([("32-true", 4), ("32-true", 2)]) == [large, small] and len(builds) == 2
    assert len(json.loads(cache.read_text())) == 2  # written whole, as JSON
    # keyed by the kind of step timed too, so rates of an older step are measured again
    assert {json.loads(k)["step"] for k in json.loads(cache.read_text())} == {precision.TIMED_STEP}
    timer([("32-true", 2), ("bf16-mixed", 2)])
    assert len(builds) == 3  # only the setting not measured yet
    cache.write_text("{not json")
    assert timer([("32-true", 2)])[0] > 0 and len(builds) == 4


def test_a_default_run_says_and_records_what_it_chose(text_file, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "train", "--data", str(text_file), "--hidden-size", "16", "--seq-len", "16",
        "--max-steps", "3", "--accelerator", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["precision"] == "auto" and run["config"]["batch_size"] is None
    assert (run["config"]["lr"], run["config"]["weight_decay"]) == (6e-3, 0.1)  # train's defaults
    auto, results = run["results"]["auto"], run["results"]
    assert (auto["precision"], auto["batch_size"]) == (results["precision"], results["batch_size"])
    native, _ = precision.cpu_bf16(precision.cpu_capabilities())
    if native is not None:
        assert results["precision"] == ("bf16-mixed" if native else "32-true")
    assert auto["precision_reason"] and "measured" in auto["batch_reason"]
    assert run["results"]["machine"]["cpu"]
    assert f"precision: {results['precision']}, batch {results['batch_size']} (auto: " \
        in result.output
    assert f"batches: {results['batch_size']} streams x 16 chars" in result.output


def test_a_measurement_on_a_busy_machine_is_used_but_not_cached(text_file, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("CHARLM_CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "machine.json"

    def train(load: float, out: str) -> str:
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
        result = CliRunner().invoke(cli, [
            "train", "--data", str(text_file), "--hidden-size", "16", "--seq-len", "16",
            "--max-steps", "2", "--accelerator", "cpu", "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
        return result.output

    busy = train(99.0, "a")
    assert "busy (load 99.0" in busy and "so not cached: a later run measures again]" in busy
    assert not cache.exists()
    quiet = train(0.0, "b")
    assert f"cached in {cache}]" in quiet and cache.exists()
    kept = cache.read_text()
    assert "[measured" not in train(99.0, "c")  # busy again: the quiet answer is used
    assert cache.read_text() == kept


class NoBf16Kernel(torch.nn.Module):
    """A model whose step fails under bf16 autocast, as oneDNN's fused LSTM does on a CPU
    without AVX512, and trains in float32."""

    def __init__(self, vocab_size=5):
        super().__init__()
        self.out = torch.nn.Embedding(vocab_size, vocab_size)

    def forward(self, x, state):
        if torch.is_autocast_cpu_enabled():
            raise RuntimeError("could not create a primitive descriptor for the LSTM forward "
                               "propagation primitive. Run workload with ONEDNN_VERBOSE=all")
        return self.out(x), state


def test_a_bf16_step_this_cpu_cannot_run_is_found_before_the_run():
    assert precision.bf16_failure(NoBf16Kernel(), 5) == \
        "could not create a primitive descriptor for the LSTM forward propagation primitive"
    from charlm.model import CharRNN, ModelConfig
    assert precision.bf16_failure(CharRNN(ModelConfig(5, "gru", 8, 1, 4)), 5) is None


def test_a_setting_without_a_kernel_measures_zero(tmp_path):
    timer = precision.step_timer(NoBf16Kernel, 5, 8, None, {"cpu": "test"}, budget_s=0.1)
    bf16, fp32 = timer([("bf16-mixed", 2), ("32-true", 2)])
    assert bf16 == 0 and fp32 > 0


@pytest.mark.parametrize("asked", ["bf16-mixed", "auto"])
def test_bf16_on_a_cpu_without_the_kernel(text_file, tmp_path, monkeypatch, asked):
    """Asked for, it is refused in one sentence; chosen by auto, the run falls back to float32
    and says why."""
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: CPUS["amx"][0])
    import charlm.training.fit
    monkeypatch.setattr(charlm.training.fit, "bf16_failure",
                        lambda model, vocab: "no bf16 LSTM kernel")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "train", "--data", str(text_file), "--hidden-size", "16", "--seq-len", "16",
        "--max-steps", "2", "--accelerator", "cpu", "--precision", asked, "--batch-size", "4",
        "--out", str(out)])
    if asked == "bf16-mixed":
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.output.strip().splitlines()[-1] == (
            "Error: this CPU cannot train the lstm cell in bf16 (no bf16 LSTM kernel); use "
            "--precision 32-true")
        assert not (out / "run.json").exists()
    else:
        assert result.exit_code == 0, result.output
        run = json.loads((out / "run.json").read_text())["results"]
        assert (run["precision"], run["batch_size"]) == ("32-true", 4)
        assert run["auto"]["precision_reason"] == (
            "AMX computes bf16 natively, but oneDNN has no bf16 kernel for the lstm on this CPU")
