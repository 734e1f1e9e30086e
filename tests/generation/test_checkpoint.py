"""charlm.generation.checkpoint: what a broken or hostile file is told, word for word.

Each refusal is one sentence that names the file and says what is wrong with it; where torch,
json or safetensors gave a reason, its first line (cut at 200 characters) ends the sentence.
The checkpoints are made from the 0.1.0 fixture, changed one thing at a time.
"""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from charlm.data.vocab import CharVocab
from charlm.errors import CharlmError
from charlm.generation.checkpoint import ExportedModel, export, load, read_checkpoint
from charlm.model import ModelConfig

FIXTURE = Path(__file__).parent / "fixtures" / "run-0.1.0" / "best.ckpt"


def changed(tmp_path: Path, change) -> Path:
    ckpt = torch.load(FIXTURE, weights_only=True)
    change(ckpt)
    path = tmp_path / "changed.ckpt"
    torch.save(ckpt, path)
    return path


def refusal(path) -> str:
    with pytest.raises(CharlmError) as e:
        load(path)
    return str(e.value)


class Hostile:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_pickle_that_would_run_code_is_refused_with_torchs_reason(tmp_path):
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "x": Hostile()}, path)
    with pytest.raises(pickle.UnpicklingError) as e:
        torch.load(path, weights_only=True)
    why = next(line.strip() for line in str(e.value).splitlines() if "Unsupported global" in line)
    assert len(why) > 160  # so the cut below is seen
    assert refusal(path) == (f"{path} was refused: it holds something other than plain data, "
                             f"and opening a checkpoint must never run code ({why[:160]})")


def test_a_file_torch_cannot_read_is_refused_with_the_first_line_of_its_error(tmp_path):
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 64)  # the start of a zip, then nothing
    with pytest.raises(Exception) as e:
        torch.load(path, weights_only=True)
    first = str(e.value).splitlines()[0][:200]
    assert first
    assert refusal(path) == (f"{path} is not a readable charlm checkpoint (truncated or another "
                             f"format): {first}")


REASONS = [(RuntimeError(), "RuntimeError"), (OSError("x" * 300 + "\nsecond line"), "x" * 200)]


def raising(error):
    def fail(*args, **kwargs):
        raise error
    return fail


@pytest.mark.parametrize("error, said", REASONS)
def test_a_reason_is_the_errors_first_line_cut_at_200_or_else_its_type(tmp_path, monkeypatch,
                                                                       error, said):
    monkeypatch.setattr(torch, "load", raising(error))
    path = tmp_path / "any.ckpt"
    path.write_bytes(b"x")
    assert refusal(path) == (f"{path} is not a readable charlm checkpoint (truncated or another "
                             f"format): {said}")


def test_a_model_that_cannot_be_built_is_refused_with_the_first_line_cut_at_200(tmp_path):
    key = "z" * 300
    path = changed(tmp_path, lambda c: c["hyper_parameters"]["model"].update({key: 1}))
    with pytest.raises(TypeError) as e:
        ModelConfig(**{key: 1})
    assert refusal(path) == (f"{path} does not hold a model this charlm can build: "
                             f"{str(e.value).splitlines()[0][:200]}")


def test_weights_that_do_not_fit_the_model_name_the_first_line_of_torchs_error(tmp_path):
    def drop_a_weight(c):
        c["state_dict"].pop(next(k for k in c["state_dict"] if k.startswith("model.")))

    path = changed(tmp_path, drop_a_weight)
    assert refusal(path) == (f"{path} does not hold a model this charlm can build: "
                             f"Error(s) in loading state_dict for CharRNN:")


def test_a_weight_that_is_not_a_number_is_named_with_the_file(tmp_path):
    model, _, _ = load(FIXTURE)
    name = list(dict(model.named_parameters()))[1]

    def poison(c):
        c["state_dict"]["model." + name][0] = float("nan")

    path = changed(tmp_path, poison)
    assert refusal(path) == (f"{path} is damaged: {name} holds values that are not finite "
                             f"numbers")


def test_a_vocabulary_out_of_order_is_refused_with_the_file(tmp_path):
    path = changed(tmp_path, lambda c: c["hyper_parameters"]["vocab"].reverse())
    assert refusal(path) == (f"{path} has a damaged vocabulary (not distinct characters in "
                             f"code-point order), so its ids cannot be trusted")


def test_a_checkpoint_without_charlms_own_metadata_still_loads(tmp_path):
    path = changed(tmp_path, lambda c: c.pop("charlm", None))
    assert read_checkpoint(path)["state_dict"]
    model, vocab, info = load(path)
    assert info["charlm"] == {} and info["path"] == str(path) and len(vocab) > 1


# -- exports ------------------------------------------------------------------------------------
@pytest.fixture
def exported(tmp_path) -> Path:
    return export(FIXTURE, tmp_path / "export")


@pytest.mark.parametrize("keep", ["config.json", "model.safetensors"])
def test_a_folder_needs_both_files_of_an_export(exported, keep):
    for f in exported.iterdir():
        if f.name != keep:
            f.unlink()
    assert refusal(exported) == (f"{exported} is a directory but neither a charlm export "
                                 f"(config.json and model.safetensors) nor a run folder (best.ckpt "
                                 f"or last.ckpt)")


def test_a_run_folder_loads_its_best_checkpoint_else_its_last(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURE, run / "last.ckpt")
    assert load(run)[2]["path"] == str(run / "last.ckpt")
    best = changed(tmp_path, lambda c: c["state_dict"][next(iter(c["state_dict"]))].mul_(2))
    shutil.copy(best, run / "best.ckpt")
    model, _, info = load(run)
    assert info["path"] == str(run / "best.ckpt")
    expected = load(best)[0].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    (run / "config.json").write_text("{}")  # an export's file: the folder is read as an export
    assert "neither a charlm export" in refusal(run)


def test_an_export_whose_config_is_not_json_is_refused_with_the_parsers_reason(exported):
    (exported / "config.json").write_text("{not json")
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads("{not json")
    assert refusal(exported) == f"{exported} is not a readable charlm export: {e.value}"


@pytest.mark.parametrize("error, said", REASONS)
def test_an_export_reason_is_the_first_line_cut_at_200_or_else_its_type(exported, monkeypatch,
                                                                        error, said):
    monkeypatch.setattr(ExportedModel, "from_pretrained", raising(error))
    assert refusal(exported) == f"{exported} is not a readable charlm export: {said}"


def test_an_export_with_a_vocabulary_of_non_strings_is_refused_with_the_reason(exported):
    config = json.loads((exported / "config.json").read_text())
    bad = list(range(len(config["vocab"])))
    config["vocab"] = bad
    (exported / "config.json").write_text(json.dumps(config))
    with pytest.raises((TypeError, ValueError)) as e:
        CharVocab(bad)
    assert refusal(exported) == f"{exported} is not a readable charlm export: {e.value}"


def test_an_export_with_a_damaged_vocabulary_or_weights_names_the_folder(exported, tmp_path):
    config = json.loads((exported / "config.json").read_text())
    config["vocab"] = config["vocab"][::-1]
    (exported / "config.json").write_text(json.dumps(config))
    assert refusal(exported).startswith(f"{exported} has a damaged vocabulary")

    from safetensors.torch import load_file, save_file
    again = export(FIXTURE, tmp_path / "again")
    weights = load_file(again / "model.safetensors")
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], float("inf"))
    save_file(weights, again / "model.safetensors")
    assert refusal(again).startswith(f"{again} is damaged: ")


def test_loading_an_export_prints_nothing(exported, capsys):
    load(exported)
    assert capsys.readouterr().out == ""


def test_no_such_path_is_one_sentence(tmp_path):
    assert refusal(tmp_path / "nope.ckpt") == f"no such checkpoint: {tmp_path / 'nope.ckpt'}"


def test_torch_is_asked_for_plain_data_on_the_cpu(monkeypatch):
    # A checkpoint saved on a GPU must load on a machine without one, and loading must never
    # unpickle code whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says.
    asked = {}
    real = torch.load

    def spy(*args, **kwargs):
        asked.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    read_checkpoint(FIXTURE)
    assert asked.get("map_location") == "cpu" and asked.get("weights_only") is True


def test_a_refused_unpickling_without_a_named_global_adds_no_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "load", raising(pickle.UnpicklingError("bad opcode")))
    path = tmp_path / "odd.ckpt"
    path.write_bytes(b"x")
    assert refusal(path) == (f"{path} was refused: it holds something other than plain data, "
                             f"and opening a checkpoint must never run code")


@pytest.mark.parametrize("content", [{"state_dict": {}}, {"hyper_parameters": {}},
                                     ["state_dict", "hyper_parameters"]])
def test_plain_data_that_is_not_a_checkpoint_is_one_sentence(tmp_path, content):
    path = tmp_path / "other.ckpt"
    torch.save(content, path)
    with pytest.raises(CharlmError) as e:
        read_checkpoint(path)
    assert str(e.value) == f"{path} is not a charlm checkpoint (no state_dict / hyper_parameters)"
