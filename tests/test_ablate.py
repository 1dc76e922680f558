"""semcon ablate's grid: axes parsed from the command line, cells named so that a reader can tell them apart."""

import pytest

from semcon.config import ConfigError
from semcon.studies.ablate import cells_of, parse_grid, value_name


@pytest.mark.parametrize(("value", "name"), [("[]", "none"), ("[ngram]", "ngram"), ("[knn, gain]", "knn,gain"),
                                             ("null", "null"), ("0.995", "0.995"), ("{a: 1}", "a_1")])
def test_a_grid_value_reads_in_its_folder_name(value, name):
    assert value_name(value) == name


def test_cells_are_the_product_of_the_axes_named_key_equals_value():
    axes = parse_grid(["privacy.filter=[],[ngram]", "consensus.competence=[knn, gain],knn"])
    cells = cells_of(axes)
    assert [c.name for c in cells] == [
        "privacy.filter=none+consensus.competence=knn,gain", "privacy.filter=none+consensus.competence=knn",
        "privacy.filter=ngram+consensus.competence=knn,gain", "privacy.filter=ngram+consensus.competence=knn"]
    assert cells[0].overrides == ["privacy.filter=[]", "consensus.competence=[knn, gain]"]
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["rounds=1", "rounds=2"])
