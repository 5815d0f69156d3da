"""The shared run layer: loading a finished run."""

from __future__ import annotations

import pytest

from bayespeft.errors import RunDirError
from bayespeft.runs import load_trained_run


@pytest.mark.parametrize("as_text", [True, False])
def test_load_trained_run_takes_a_string_or_a_path_and_names_what_is_missing(tmp_path, as_text):
    (tmp_path / "config.yaml").write_text("model:\n  name: tiny-bert\n")
    where = str(tmp_path) if as_text else tmp_path
    with pytest.raises(RunDirError, match=r"not a finished bayespeft run \(adapter_model.safetensors missing\)"):
        load_trained_run(where)
