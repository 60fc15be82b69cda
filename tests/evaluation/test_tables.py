"""loraclf.evaluation.tables: the plain-text and the Markdown table every printer uses."""

from loraclf.evaluation.tables import markdown_table, text_table


def test_text_table_aligns_names_left_and_numbers_right():
    lines = text_table([["run", "accuracy", "params"], ["lora-r8", "0.91", "1,024"], ["head", "0.8", "5"]])
    assert lines == ["run      accuracy  params",
                     "lora-r8      0.91   1,024",
                     "head          0.8       5"]


def test_text_table_right_from_and_trailing_spaces():
    lines = text_table([["a", "long name", "1"], ["bb", "x", "22"]], right_from=2)
    assert lines == ["a   long name   1", "bb  x          22"]
    assert text_table([["name", ""], ["x", ""]]) == ["name", "x"]  # an empty last column leaves no spaces
    assert text_table([]) == []
    assert text_table([["k", 1], ["key", 22]]) == ["k     1", "key  22"]  # cells need not be strings


def test_markdown_table_escapes_pipes_and_aligns_numbers():
    md = markdown_table(["label", "F1 a|b", "n"], [["a|b", "0.5000", "3"]], right_from=1)
    assert md.splitlines() == ["| label | F1 a\\|b | n |", "|---|---:|---:|", "| a\\|b | 0.5000 | 3 |"]
    assert markdown_table(["x"], []).splitlines() == ["| x |", "|---|"]
