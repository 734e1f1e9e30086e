"""The error family: a message names settings by field; the library shows the field, the CLI the
flag, and a message passed on as its template keeps the marks."""

from click.testing import CliRunner

from charlm.cli import cli
from charlm.cli.common import flag
from charlm.errors import CharlmError, SettingError
from charlm.model import ModelConfig


def test_a_setting_reads_as_its_field_in_the_library_and_as_its_flag_in_the_cli():
    e = CharlmError("`hidden_size` must be at least 1, not 0; or pass `text_file`")
    assert str(e) == "hidden_size must be at least 1, not 0; or pass text_file"
    assert e.render(flag) == "--hidden-size must be at least 1, not 0; or pass --text"
    assert CharlmError(e.template).render(flag) == e.render(flag)  # passed on, still marked
    assert str(CharlmError("a `Quoted` word and `two words` stay")) == \
        "a `Quoted` word and `two words` stay"


def test_model_settings_are_setting_errors_and_value_errors():
    try:
        ModelConfig(5, hidden_size=0)
    except SettingError as e:
        assert isinstance(e, ValueError) and str(e) == "hidden_size must be at least 1, not 0"
    else:
        raise AssertionError("hidden_size 0 was accepted")


def test_the_cli_names_the_flag(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world\n" * 200)
    result = CliRunner().invoke(cli, ["train", "--data", str(text), "--hidden-size", "0",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == \
        "Error: --hidden-size must be at least 1, not 0"
