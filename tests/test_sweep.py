"""Sweeps without a cluster: grids expanded into lines with stable ids (the Slurm side is tests/test_slurm.py)."""


def test_linked_sweep_axis_sets_fields_together(tmp_path):
    from distbench.sweep import expand

    grid = tmp_path / "g.toml"
    grid.write_text(
        '[axes]\n"model.head" = ["learned", "fixed-srht"]\n'
        'budget = [{"model.num_classes" = 10, "train.steps" = 3}, {"model.num_classes" = 20, "train.steps" = 5}]\n'
    )
    lines, warnings = expand(grid)
    assert not warnings
    got = sorted(
        (x["config"]["model"]["head"], x["config"]["model"]["num_classes"], x["config"]["train"]["steps"])
        for x in lines
    )
    assert got == [("fixed-srht", 10, 3), ("fixed-srht", 20, 5), ("learned", 10, 3), ("learned", 20, 5)]
